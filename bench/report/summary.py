"""The table printed at the end of a run (the run folder itself is bench/store/run_folder.py's)."""
from __future__ import annotations

import pandas as pd

from bench.analysis.frame import step_variant
from bench.result import Result
from bench.store.run_folder import results_frame

SUMMARY_COLUMNS = ["mode", "device", "pipeline", "variant", "batch_size", "threads", "world_size", "width", "status",
                   "images_per_s", "images_per_s_ci_pct", "stop", "step_ms_p50", "test_accuracy_pct",
                   "latency_ms_p50", "peak_rss_mb", "busy"]


def stop_reason(frame: pd.DataFrame) -> pd.Series:
    """Why each Case stopped measuring: precise (its interval reached the target), budget, or epochs."""
    stopped = frame["stopped_by"] if "stopped_by" in frame else pd.Series(None, index=frame.index, dtype=object)
    return stopped.map(lambda s: "-" if s is None or pd.isna(s) else
                       {"max_seconds": "budget", "max_steps": "budget"}.get(s, s))


def summary_table(results: list[Result]) -> str:
    """The table printed at the end of a run."""
    if not results:
        return "(no results)"
    frame = results_frame(results)
    frame = frame.assign(variant=step_variant(frame),
                         world_size=frame.get("world_size", pd.Series(1, index=frame.index)).fillna(1).astype(int),
                         stop=stop_reason(frame),
                         busy=frame.get("other_cpu_cores", pd.Series(None, index=frame.index, dtype=float)))
    if "images_per_s_ci_pct" not in frame:  # runs from before intervals
        frame["images_per_s_ci_pct"] = None
    frame = frame[SUMMARY_COLUMNS].copy()
    frame["threads"] = frame["threads"].map(lambda t: "-" if pd.isna(t) else int(t))
    frame["width"] = frame["width"].map(lambda w: f"{w:g}")
    for column, digits in (("images_per_s", 0), ("images_per_s_ci_pct", 1), ("step_ms_p50", 2),
                           ("test_accuracy_pct", 1), ("latency_ms_p50", 2), ("peak_rss_mb", 0), ("busy", 1)):
        frame[column] = frame[column].map(lambda v, d=digits: "-" if v is None or pd.isna(v) else f"{v:.{d}f}")
    frame = frame.rename(columns={"images_per_s_ci_pct": "+-%", "batch_size": "batch", "world_size": "ranks",
                                  "busy": "others_cores"})
    return frame.to_string(index=False)


def precision_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every timed Case: its median images/s with the 95% interval, the windows it rests on, why it stopped
    (budget: before reaching its precision target) and how busy the machine was (others' cores)."""
    ok = frame[(frame["status"] == "ok") & frame["images_per_s"].notna()] if "images_per_s" in frame else frame[:0]
    if ok.empty or "images_per_s_ci_low" not in ok:
        return pd.DataFrame()
    ok = ok.assign(**{c: pd.to_numeric(ok[c], errors="coerce") for c in
                      ("images_per_s", "images_per_s_ci_low", "images_per_s_ci_high", "images_per_s_ci_pct")})
    table = pd.DataFrame({
        "key": ok["key"], "images_per_s": ok["images_per_s"].round(0),
        "ci95": [f"{lo:.0f}-{hi:.0f}" if pd.notna(lo) else "-" for lo, hi in
                 zip(ok["images_per_s_ci_low"], ok["images_per_s_ci_high"])],
        "+-%": ok["images_per_s_ci_pct"].round(1), "windows": ok["windows_s"].map(len),
        "target_+-%": ok.get("target_precision_pct", pd.Series(None, index=ok.index)),
        "stop": stop_reason(ok),
        "others_cores": ok.get("other_cpu_cores", pd.Series(None, index=ok.index, dtype=float)),
        "contended": ok.get("contended", pd.Series(None, index=ok.index)),
        "processes": ok.get("processes", pd.Series(None, index=ok.index, dtype=float)).astype("Int64"),
        "between_%": ok.get("between_process_pct", pd.Series(None, index=ok.index, dtype=float)).round(1)})
    if (table["processes"].fillna(1) <= 1).all():
        table = table.drop(columns=["processes", "between_%"])
    return table.dropna(axis=1, how="all").reset_index(drop=True)
