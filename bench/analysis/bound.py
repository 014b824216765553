"""The input bound (bench/measuring/input_bound.py): per machine and batch size, the rate the tutorial's DataLoader
alone delivered, the CPU's best training rate through it (over threads), each device's, and how many times faster
than the CPU any accelerator could train the tutorial pipeline on that host: at most the DataLoader's rate over the
CPU's. Pure: a results frame in, a table out."""
from __future__ import annotations

import pandas as pd

from bench.analysis.frame import PLAIN, ok_rows
from bench.schema import INPUT

COLUMNS = ["machine", "batch_size", "input_images_per_s", "input_low", "input_high", "cpu_images_per_s", "bound",
           "device", "device_images_per_s", "share_of_bound"]


def _interval(rows: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    low = rows["images_per_s_ci_low"] if "images_per_s_ci_low" in rows else rows["images_per_s"]
    high = rows["images_per_s_ci_high"] if "images_per_s_ci_high" in rows else rows["images_per_s"]
    return low.fillna(rows["images_per_s"]), high.fillna(rows["images_per_s"])


def input_bound(df: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """One row per machine, batch size and training device of the tutorial pipeline (the eager step, width 1, one
    process; `best` is the best over threads, bench/analysis/tables.py best_throughput): `bound` is the
    DataLoader's images/s over the CPU's training images/s, `share_of_bound` a device's training rate over the
    DataLoader's (a GPU at 1.0 is fed no faster than the DataLoader delivers)."""
    ok = ok_rows(df)
    inputs = ok[(ok["mode"] == INPUT) & ok["images_per_s"].notna()]
    if inputs.empty or best.empty:
        return pd.DataFrame(columns=COLUMNS)
    low, high = _interval(inputs)
    inputs = inputs.assign(input_images_per_s=inputs["images_per_s"], input_low=low, input_high=high)
    inputs = inputs[["machine", "batch_size", "input_images_per_s", "input_low", "input_high"]]
    train = best[(best["mode"] == "train") & (best["pipeline"] == "tutorial") & (best["variant"] == PLAIN)
                 & (best["width"] == 1) & (best["world_size"] == 1)]
    cpu = (train[train["device"].astype(str).str.startswith("cpu")]
           .rename(columns={"images_per_s": "cpu_images_per_s"})[["machine", "batch_size", "cpu_images_per_s"]])
    out = inputs.merge(cpu, on=["machine", "batch_size"], how="left")
    out["bound"] = out["input_images_per_s"] / out["cpu_images_per_s"]
    devices = (train.rename(columns={"images_per_s": "device_images_per_s"})
               [["machine", "batch_size", "device", "device_images_per_s"]])
    out = out.merge(devices[~devices["device"].astype(str).str.startswith("cpu")], on=["machine", "batch_size"],
                    how="left")
    out["share_of_bound"] = out["device_images_per_s"] / out["input_images_per_s"]
    return out[COLUMNS].sort_values(["machine", "batch_size"]).reset_index(drop=True)
