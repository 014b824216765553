"""bench/api.py: the Python API the notebook uses, the same sweep and report as the CLI."""
from __future__ import annotations

from pathlib import Path

import pytest

import bench
from bench.sweep.spec import with_defaults


def test_sweep_spec_takes_the_cli_options_as_keywords_and_validates_them_the_same_way():
    spec = bench.sweep_spec(devices=["cpu"], batch_sizes=[4, 32], threads=[1], quick=True, dataset="synthetic",
                            modes="train", no_download=True)
    assert spec.devices == ["cpu"] and spec.batch_sizes == [4, 32] and spec.threads == [1]
    assert spec.modes == ["train"] and spec.download is False and spec.max_seconds == 0.2  # --quick's budget
    with pytest.raises(ValueError, match=r"^--batch-sizes: '0' is not a positive integer"):
        bench.sweep_spec(batch_sizes=[0])
    with pytest.raises(ValueError, match=r"^unknown option 'batch_size' \(expected one of .*batch_sizes"):
        bench.sweep_spec(batch_size=4)
    with pytest.raises(ValueError, match=r"^--cuda-graphs: CUDA graphs need a CUDA device"):
        bench.sweep_spec(devices=["cpu"], cuda_graphs=True)


def test_every_keyword_means_what_it_says_false_and_zero_included():
    spec = bench.sweep_spec(download=False, verify=False, dataset="synthetic")
    assert spec.download is False and spec.verify is False and spec.dataset == "synthetic"
    spec = bench.sweep_spec(download=True, verify=True, cuda_graphs=False, quick=False, max_seconds=0, seed=0)
    assert spec.download is True and spec.verify is True and spec.cuda_graphs is False
    assert spec.max_seconds is None and spec.seed == 0 and spec.epochs == 2  # 0 s: every epoch in full
    assert bench.sweep_spec(no_download=True).download is False  # the CLI's word for it
    assert bench.sweep_spec(window=0.05).window_s == bench.sweep_spec(window_s=0.05).window_s == 0.05
    assert bench.sweep_spec().time_limit_s == 600.0 == with_defaults(devices=["cpu"]).time_limit_s  # one default
    with pytest.raises(ValueError, match=r"^download: 'no' is not True or False$"):
        bench.sweep_spec(download="no")
    with pytest.raises(ValueError, match=r"^--seed: 'x' is not a seed \(expected an integer 0..4294967295\)"):
        bench.sweep_spec(seed="x")
    with pytest.raises(ValueError, match=r"^--dataset: invalid choice: 'imagenet'"):
        bench.sweep_spec(dataset="imagenet")


def test_run_sweep_writes_the_run_folder_and_returns_its_results_and_the_report_its_verdict(tmp_path: Path):
    spec = bench.sweep_spec(devices=["cpu"], batch_sizes=[8, 32], threads=[1], pipelines=["resident"],
                            modes=["train"], dataset="synthetic", max_steps=30, warmup_steps=5, window=0.05)
    results = bench.run_sweep(spec, out=tmp_path / "run")
    assert results.attrs["run_dir"] == str(tmp_path / "run")
    sweep = results[results["mode"] != "job"]
    assert sorted(sweep["batch_size"]) == [8, 32] and set(results["status"]) == {"ok"}
    assert results[results["mode"] == "job"]["key"].tolist() == ["job/cpu/tutorial/b4/tauto/w1/r0/malloc-tuned"]  # on by default
    assert (results["images_per_s"] > 0).all()
    assert {"results.jsonl", "results.csv", "environment.json"} <= {p.name for p in (tmp_path / "run").iterdir()}
    with pytest.raises(ValueError, match="already holds results"):
        bench.run_sweep(spec, out=tmp_path / "run")

    rep = bench.make_report(results.attrs["run_dir"])
    assert rep.verdict.headline.startswith("The tutorial's job (its script as published")  # the asker's job first
    assert any(f.startswith("Only cpu was measured") for f in rep.verdict.findings)
    assert rep.markdown.read_text().startswith("# Does a GPU help")
    assert "throughput_train.png" in rep.charts and rep.charts["throughput_train.png"].stat().st_size > 0
    assert rep._repr_markdown_().startswith(f"**{rep.verdict.headline}**")
    with pytest.raises(ValueError, match="out is needed with several run folders"):
        bench.make_report([tmp_path / "run", tmp_path / "run"])
