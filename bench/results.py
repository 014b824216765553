"""results.jsonl (append-only, one Result a line) and the tables made from it."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.analysis import step_variant
from bench.schema import Result

RESULTS = "results.jsonl"
SUMMARY_COLUMNS = ["mode", "device", "pipeline", "variant", "batch_size", "threads", "world_size", "width", "status",
                   "images_per_s", "images_per_s_spread_pct", "step_ms_p50", "test_accuracy_pct",
                   "latency_ms_p50", "peak_rss_mb"]


def append_result(run_dir: Path, result: Result) -> None:
    """Appends one complete line and forces it to disk, so an interrupted sweep loses nothing finished."""
    path = run_dir / RESULTS
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell():
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a line cut short by a crash: start a fresh one
                f.write(b"\n")
        f.write((result.to_json() + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def load_results(run_dir: Path) -> list[Result]:
    """The Results of a run, the latest line winning for a key (a resumed Case replaces its failure)."""
    path = run_dir / RESULTS
    if not path.exists():
        return []
    latest: dict[str, Result] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    result = Result.from_dict(json.loads(line))
                except (ValueError, TypeError):
                    continue  # a line cut short by a crash while writing; its Case will be re-run
                latest[result.case.key] = result
    return list(latest.values())


class RunError(Exception):
    """A run folder that cannot be read: missing, or without any Case."""


@dataclass
class Run:
    path: Path
    environment: dict
    frame: pd.DataFrame


def load_run(path: Path) -> Run:
    """A run folder's Results as a frame, with its environment.json ({} when absent), older
    formats upgraded to the current one here."""
    if not path.is_dir():
        raise RunError(f"'{path}' is not a folder (expected a folder written by bench run)")
    results = load_results(path)
    if not results:
        raise RunError(f"'{path}' holds no results.jsonl with any Case (expected a folder written by bench run)")
    env_path = path / "environment.json"
    environment = json.loads(env_path.read_text()) if env_path.exists() else {}
    if "matmul_gflops" in environment and "ceilings" not in environment:
        # before ceilings named their precision: one flat fp32 rate per device, measured and run at
        # torch's default float32 matmul precision, which the harness never changed; and before device
        # names were indexed (as Result.from_dict reads them)
        def fp32(by_device: dict) -> dict:
            return {("cuda:0" if d == "cuda" else d): {"fp32": v} for d, v in by_device.items()}

        environment["ceilings"] = {"matmul_gflops": fp32(environment.pop("matmul_gflops")),
                                   "matmul_n": fp32(environment.pop("matmul_n", {}))}
        environment.setdefault("float32_matmul_precision", "highest")
    return Run(path, environment, results_frame(results))


def results_frame(results: list[Result]) -> pd.DataFrame:
    """One tidy row per Case."""
    return pd.DataFrame([r.to_dict() for r in results])


def write_csv(run_dir: Path, results: list[Result]) -> Path:
    frame = results_frame(results)
    for column in frame.columns:  # lists and dicts as JSON text, so the CSV reads back with pandas alone
        if frame[column].map(lambda v: isinstance(v, (list, dict))).any():
            frame[column] = frame[column].map(json.dumps)
    frame.to_csv(run_dir / "results.csv", index=False)
    return run_dir / "results.csv"


def summary_table(results: list[Result]) -> str:
    """The table printed at the end of a run."""
    if not results:
        return "(no results)"
    frame = results_frame(results)
    frame = frame.assign(variant=step_variant(frame),
                         world_size=frame.get("world_size", pd.Series(1, index=frame.index)).fillna(1).astype(int))
    frame = frame[SUMMARY_COLUMNS].copy()
    frame["threads"] = frame["threads"].map(lambda t: "-" if pd.isna(t) else int(t))
    frame["width"] = frame["width"].map(lambda w: f"{w:g}")
    for column, digits in (("images_per_s", 0), ("images_per_s_spread_pct", 1), ("step_ms_p50", 2),
                           ("test_accuracy_pct", 1), ("latency_ms_p50", 2), ("peak_rss_mb", 0)):
        frame[column] = frame[column].map(lambda v, d=digits: "-" if v is None or pd.isna(v) else f"{v:.{d}f}")
    frame = frame.rename(columns={"images_per_s_spread_pct": "iqr_%", "batch_size": "batch", "world_size": "ranks"})
    return frame.to_string(index=False)
