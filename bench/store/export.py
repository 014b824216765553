"""A sweep run in pytest-benchmark's JSON format, so `pytest-benchmark compare` can table and plot it.

Each finished Case becomes one benchmark whose rounds are its timed windows and whose time is the
mean step time within a window (window seconds x batch size / window images): one training step
or one inference batch, the unit of `pytest tests/benchmarks`. The statistics are computed by
pytest-benchmark's own `Stats`.
"""
from __future__ import annotations

import platform
from datetime import datetime

import pandas as pd
import pytest_benchmark
from pytest_benchmark.stats import Stats

from bench.analysis.frame import step_variant
from bench.store.run_folder import Run


def _benchmark(row: pd.Series, variant: str, run_id: str) -> dict:
    stats = Stats()
    for seconds, images in zip(row["windows_s"], row["windows_images"]):
        stats.update(seconds * row["batch_size"] / images)
    threads = None if pd.isna(row["threads"]) else int(row["threads"])
    params = {"device": row["device"], "batch": int(row["batch_size"]), "pipeline": row["pipeline"],
              "threads": threads, "variant": variant, "width": float(row["width"])}
    return {
        "group": f"{row['mode']} batch {row['batch_size']}",
        "name": row["key"],
        "fullname": f"bench run {run_id}::{row['key']}",
        "params": params,
        "param": "-".join(str(v) for v in params.values()),
        "extra_info": {"mode": row["mode"], "device": row["device"], "pipeline": row["pipeline"],
                       "batch_size": int(row["batch_size"]), "threads": threads, "width": float(row["width"]),
                       "variant": variant, "images_per_s": float(row["images_per_s"]),
                       "images_per_s_spread_pct": float(row["images_per_s_spread_pct"]),
                       "dataset": row["dataset"], "unit": "seconds per step (mean within a timed window)"},
        "options": {"timer": "bench.measuring.clock.DeviceClock", "min_rounds": len(stats.data), "max_time": None,
                    "warmup": int(row["warmup_steps"]), "disable_gc": False},
        "stats": {**stats.as_dict(), "data": stats.data, "iterations": 1},
    }


def pytest_benchmark_json(run: Run) -> tuple[dict, int]:
    """(the document, how many Cases were left out because they did not finish or have no windows)."""
    env = run.environment
    frame = run.frame.assign(variant=step_variant(run.frame))
    usable = frame[(frame["status"] == "ok") & frame["windows_s"].map(lambda w: isinstance(w, list) and len(w) > 0)]
    run_id = env.get("run_id", run.path.name)
    machine = {"node": env.get("hostname", ""), "processor": env.get("cpu_model", ""),
               "machine": platform.machine(), "python_version": env.get("python", ""),
               "system": env.get("os", ""), "release": "",
               "cpu": {"brand_raw": env.get("cpu_model", ""), "count": env.get("cpu_logical_cores")},
               "gpus": [g.get("name") for g in env.get("gpus", [])], "torch": env.get("torch")}
    doc = {
        "machine_info": machine,
        "commit_info": {"id": env.get("git_commit") or "", "project": "cifar10-gpu-bench", "dirty": env.get("git_dirty")},
        "benchmarks": [_benchmark(row, row["variant"], run_id) for _, row in usable.iterrows()],
        "datetime": env.get("timestamp") or datetime.now().isoformat(timespec="seconds"),
        "version": pytest_benchmark.__version__,
    }
    return doc, len(frame) - len(usable)
