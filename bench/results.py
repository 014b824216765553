"""The table printed at the end of a run (the run folder itself is bench/run_folder.py's)."""
from __future__ import annotations

import pandas as pd

from bench.rows import step_variant
from bench.run_folder import results_frame
from bench.schema import Result

SUMMARY_COLUMNS = ["mode", "device", "pipeline", "variant", "batch_size", "threads", "world_size", "width", "status",
                   "images_per_s", "images_per_s_spread_pct", "step_ms_p50", "test_accuracy_pct",
                   "latency_ms_p50", "peak_rss_mb"]


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
