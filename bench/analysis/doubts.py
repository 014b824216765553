"""What the report should doubt, from a results frame: Cases whose windows spread widely, each Case's recorded
warnings, and the time no timed window holds."""
from __future__ import annotations

import pandas as pd

from bench.analysis.frame import ok_rows
from bench.measuring.stats import SPREAD_WARN_PCT


def noisy_cases(df: pd.DataFrame) -> pd.DataFrame:
    """Cases whose throughput spread (IQR) exceeds 10% of the median."""
    ok = ok_rows(df)
    return ok[ok["images_per_s_spread_pct"] > SPREAD_WARN_PCT][["key", "images_per_s_spread_pct"]]


def case_warnings(df: pd.DataFrame) -> pd.DataFrame:
    """Each Case's recorded doubts (noisy windows, too few windows, oversubscribed cores), beside its key."""
    if "warnings" not in df:
        return pd.DataFrame(columns=["key", "warnings"])
    has = df["warnings"].map(lambda w: isinstance(w, list) and len(w) > 0)
    return pd.DataFrame({"key": df.loc[has, "key"], "warnings": df.loc[has, "warnings"].map("; ".join)})


def time_outside_windows(df: pd.DataFrame) -> pd.DataFrame:
    """Per machine, device, mode and variant: what no timed window holds, and no throughput shows.
    Start-up is from the Case's process to its first step (imports, data, model, on CUDA the context
    and any graph capture); warm-up is its first steps (lazy initialisation, cuDNN autotuning);
    new-shape steps are later steps on a batch size first seen then (an epoch's partial last batch)."""
    cols = ["machine", "device", "mode", "variant", "cases", "startup_s", "warmup_s", "new_shape_steps"]
    ok = ok_rows(df)
    if ok.empty or "startup_s" not in ok:
        return pd.DataFrame(columns=cols)
    ok = ok.assign(new_shape_steps=ok.get("new_shape_steps", pd.Series(float("nan"), index=ok.index)))
    grouped = ok.groupby(["machine", "device", "mode", "variant"], sort=True)
    out = grouped.agg(cases=("key", "size"), startup_s=("startup_s", "median"), warmup_s=("warmup_s", "median"),
                      new_shape_steps=("new_shape_steps", lambda s: s.sum(min_count=1)))
    return out.reset_index()[cols]
