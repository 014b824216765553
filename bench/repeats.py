"""A Case measured in several processes (`--repeats N`) as one figure, with an interval that says how much
processes differ, not only how much one process's windows did.

A Case's own interval comes from the windows of one process. On a small shared machine a new process of the
same Case lands further away than that (tests/perf/adaptive_vs_long.py: up to ~12% here, while each interval
said +-1-3%): where its memory lands, how malloc serves it, what the hypervisor does meanwhile. Repeats measure
that. Their figure is the geometric mean of the processes' medians, and its 95% interval is Student's t on the
logarithms with the spread between processes pooled over every repeated Case of the run (the machine's, much
better known from 30 Cases than from the 2-3 processes of one; each Case's own processes still weigh in it).
Before this, the analysis took the best of the repeats: an optimistic figure, the more so the more repeats.
"""
from __future__ import annotations

import math
import re
from statistics import NormalDist

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

REPEAT = re.compile(r"/r\d+(?=/|$)")


_T95_SMALL = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764}  # Student's t, 97.5th percentile


def t95(dof: int) -> float:
    """The two-sided 95% quantile of Student's t: tabled up to 4 degrees of freedom, then the Cornish-Fisher
    expansion (within 0.2% of the exact value from 5 on)."""
    if dof in _T95_SMALL:
        return _T95_SMALL[dof]
    z = NormalDist().inv_cdf(0.975)
    return (z + (z ** 3 + z) / (4 * dof) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * dof ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * dof ** 3))


def _measured(df: pd.DataFrame) -> pd.Series:
    return (df["status"] == "ok") & pd.to_numeric(df["images_per_s"], errors="coerce").gt(0)


def _groups(df: pd.DataFrame) -> pd.Series:
    """Which rows are repeats of one Case: the run and the key without its repeat."""
    run = df["run_id"].astype(str) if "run_id" in df else pd.Series("", index=df.index)
    return run + "|" + df["key"].astype(str).str.replace(REPEAT, "", regex=True)


def _window_rates(g: pd.DataFrame) -> np.ndarray:
    if "windows_s" not in g or "windows_images" not in g:
        return np.array([])
    pairs = [(n, s) for ns, ss in zip(g["windows_images"], g["windows_s"]) if isinstance(ns, list) and isinstance(ss, list)
             for n, s in zip(ns, ss) if s > 0]
    return np.array([n / s for n, s in pairs])


def between_processes(df: pd.DataFrame) -> tuple[float, int] | None:
    """(the standard deviation of log images/s between processes of one Case, pooled over the Cases with at
    least two measured processes; its degrees of freedom), or None when no Case has two."""
    ok = df[_measured(df) & df["key"].astype(str).str.contains(REPEAT)]
    if ok.empty:
        return None
    logs = np.log(pd.to_numeric(ok["images_per_s"]))
    grouped = logs.groupby(_groups(ok))
    sizes = grouped.size()
    dof = int((sizes[sizes > 1] - 1).sum())
    if dof == 0:
        return None
    squares = float(((logs - grouped.transform("mean")) ** 2).sum())
    return math.sqrt(squares / dof), dof


def collapse(df: pd.DataFrame) -> pd.DataFrame:
    """One row per Case over its repeats (unchanged where a Case ran once): key without its repeat, images/s the
    geometric mean of its processes' medians with the interval above, `processes` how many, `windows_s` all their
    windows, other numbers their median. Repeats that did not finish stay as rows of their own."""
    if df.empty or "key" not in df or "images_per_s" not in df:
        return df
    measured = _measured(df) & df["key"].astype(str).str.contains(REPEAT)  # a key without /rN is no repeat
    groups = _groups(df)
    counts = groups[measured].value_counts()
    repeated = measured & groups.map(counts).fillna(0).gt(1)
    once = pd.Series(np.where(measured, 1.0, np.nan), index=df.index)
    out = df.assign(processes=df["processes"].fillna(once) if "processes" in df else once)  # idempotent
    spread = between_processes(df)
    if not repeated.any() or spread is None:
        return out
    sd, dof = spread
    t = t95(dof)
    rows = []
    for _, g in df[repeated].groupby(groups[repeated], sort=False):
        row = g.iloc[0].copy()
        for column in g.columns:
            if is_numeric_dtype(g[column]) and not is_bool_dtype(g[column]) and g[column].notna().any():
                row[column] = g[column].median()
        logs = np.log(pd.to_numeric(g["images_per_s"]))
        centre, half = float(logs.mean()), t * sd / math.sqrt(len(g))
        row["images_per_s"] = math.exp(centre)
        row["images_per_s_ci_low"], row["images_per_s_ci_high"] = math.exp(centre - half), math.exp(centre + half)
        row["images_per_s_ci_pct"] = 100 * (math.exp(half) - 1)
        row["key"] = REPEAT.sub("", str(row["key"]))
        row["repeat"] = np.nan
        row["processes"] = len(g)
        row["between_process_pct"] = 100 * (math.exp(sd) - 1)
        for column in ("windows_s", "windows_images"):
            if column in g:
                row[column] = [w for ws in g[column] if isinstance(ws, list) for w in ws]
        rates = _window_rates(g)  # before the lists above are joined: from g
        if len(rates):  # the spread of every window of every process
            row["images_per_s_p25"], row["images_per_s_p75"] = np.percentile(rates, [25, 75])
        row["images_per_s_p25"] = min(row["images_per_s_p25"], row["images_per_s"])  # the figure inside its spread
        row["images_per_s_p75"] = max(row["images_per_s_p75"], row["images_per_s"])
        row["images_per_s_spread_pct"] = 100 * (row["images_per_s_p75"] - row["images_per_s_p25"]) / row["images_per_s"]
        row["warnings"] = sorted({w for ws in g.get("warnings", []) if isinstance(ws, list) for w in ws})
        row["contended"] = bool(pd.Series(g["contended"]).fillna(False).astype(bool).any()) if "contended" in g else None
        rows.append(row)
    return pd.concat([out[~repeated], pd.DataFrame(rows)], ignore_index=True)
