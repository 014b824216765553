"""A Case measured in several processes (`--repeats N`) as one figure, with an interval that says how much
processes differ, not only how much one process's windows did.

A Case's own interval comes from the windows of one process. On a small shared machine a new process of the
same Case lands further away than that (tests/perf/adaptive_vs_long.py: up to ~12% here, while each interval
said +-1-3%): where its memory lands, how malloc serves it, what the hypervisor does meanwhile. Repeats measure
that. Their figure is the geometric mean of the processes' medians, and its 95% interval is Student's t on the
logarithms with the spread between processes pooled over the run's repeated Cases on the same device (the
machine's, much better known from 30 Cases than from the 2-3 processes of one; each Case's own processes still
weigh in it).
Before this, the analysis took the best of the repeats: an optimistic figure, the more so the more repeats.

The tutorial's job sampled in sittings (bench/sweep/plan.py `job_sittings`) is combined the same way, on its own terms:
each sitting projects the whole job, the job's time is their median, and its interval is where one run of the job
lands, 95% of the time, on this machine as it was during the sweep: a prediction interval, the median +- Student's t
(sittings - 1 degrees of freedom) x the sittings' spread x sqrt(1 + 1/sittings), never narrower than the sittings'
own sampling intervals say. The spread is robust (1.4826 x the median absolute deviation, the standard deviation
of a normal sample): a sitting whose stretch of 20 steps caught a stall of seconds projects the job 8-16x too
long (2 of 25 sittings in one run of tests/perf/job_vs_tutorial.py on 2026-12-07; none of 20 sittings measured
after it), and with the mean and standard deviation one such sitting made the job 287 s instead of 122 and its
interval -843 to 1418 s. A sitting samples under a second of each pass, and the machine's pace
moves more between seconds and minutes than within one second: each sitting's own bootstrap interval is 2-3x
narrower than how far sittings land apart, and whole runs of the job differ by a tenth or more
(tests/perf/job_vs_tutorial.py). A short sitting varies at least as much as a whole run, so the interval errs wide.
Its sittings stay out of the pooled spread of images/s: a sitting's second of batch-4 steps is no Case's window.
"""
from __future__ import annotations

import math
import re
from statistics import NormalDist

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from bench.measuring.stats import WindowStats
from bench.schema import JOB

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


def _job(df: pd.DataFrame) -> pd.Series:
    return df["mode"].astype(str).eq(JOB) if "mode" in df else pd.Series(False, index=df.index)


def _groups(df: pd.DataFrame) -> pd.Series:
    """Which rows are repeats of one Case: the run and the key without its repeat."""
    return _run(df) + "|" + df["key"].astype(str).str.replace(REPEAT, "", regex=True)


def _run(df: pd.DataFrame) -> pd.Series:
    return df["run_id"].astype(str) if "run_id" in df else pd.Series("", index=df.index)


def _pools(df: pd.DataFrame) -> pd.Series:
    """Whose spread between processes is pooled: a run's Cases on one device (a GPU's processes differ from each
    other unlike a CPU's, and so do two machines')."""
    device = df["device"].astype(str) if "device" in df else pd.Series("", index=df.index)
    return _run(df) + "|" + device


def _windows(g: pd.DataFrame) -> WindowStats:
    """Every timed window of the processes in g, as one statistics object."""
    pairs = [(ss, ns) for ss, ns in zip(g.get("windows_s", []), g.get("windows_images", []))
             if isinstance(ss, list) and isinstance(ns, list)]
    return WindowStats.of([s for ss, _ in pairs for s in ss], [n for _, ns in pairs for n in ns])


def between_processes(df: pd.DataFrame) -> tuple[float, int] | None:
    """(the standard deviation of log images/s between processes of one Case, pooled over the Cases of `df` with
    at least two measured processes; its degrees of freedom), or None when no Case has two."""
    ok = df[_measured(df) & df["key"].astype(str).str.contains(REPEAT) & ~_job(df)]
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
    """One row per Case and run, keyed without its repeat: over two processes or more that measured it, images/s
    is the geometric mean of their medians with the interval above, `processes` how many, `windows_s` all their
    windows, other numbers their median; with one, that process's row; with none, its first repeat's (its
    status and error). Repeats that did not finish are named in the row's warnings. Rows whose key names no
    repeat are left as they are, so collapsing twice changes nothing."""
    if df.empty or "key" not in df or "images_per_s" not in df:
        return df
    df = df.reset_index(drop=True)
    repeatable = df["key"].astype(str).str.contains(REPEAT)
    twice = df[repeatable].duplicated(subset=[c for c in ("run_id", "key") if c in df])  # a run folder given twice
    df = df.drop(twice[twice].index)
    repeatable = repeatable.drop(twice[twice].index)
    measured = _measured(df)
    once = pd.Series(np.where(measured, 1.0, np.nan), index=df.index)
    df = df.assign(processes=df["processes"].fillna(once) if "processes" in df else once)
    if not repeatable.any():
        return df
    spreads = {pool: between_processes(rows) for pool, rows in df[repeatable].groupby(_pools(df[repeatable]))}
    pools, groups = _pools(df), _groups(df)
    rows = []
    for _, g in df[repeatable].groupby(groups[repeatable], sort=False):
        ok = g[measured[g.index]]
        if len(ok) >= 2 and _job(ok).all():
            row = _combined_job(ok)
        elif len(ok) >= 2:
            row = _combined(ok, spreads[pools[ok.index[0]]])
        else:
            row = (ok if len(ok) else g).iloc[0].copy()
        row["key"] = REPEAT.sub("", str(row["key"]))
        failed = g.drop(ok.index)
        if len(ok) and len(failed):
            row["warnings"] = list(row["warnings"] if isinstance(row.get("warnings"), list) else []) + [
                f"repeat {r['repeat']:.0f} ended as {r['status']}" + (f": {r['error']}" if isinstance(r.get("error"), str) else "")
                for _, r in failed.iterrows()]
        rows.append(row)
    return pd.concat([df[~repeatable], pd.DataFrame(rows)], ignore_index=True)


MAD_TO_SD = 1.4826  # the median absolute deviation of a normal sample, times this, estimates its standard deviation


def _combined_job(g: pd.DataFrame) -> pd.Series:
    """The row of the tutorial's job sampled in the sittings of g (two or more, all ok): its time the sittings'
    median (its parts the median sitting's), the share measured their sum, the interval where 95% of runs land
    (above); the other numbers their median."""
    row = _combined(g, None)
    parts = [c for c in ("job_s", "job_startup_s", "job_import_s", "job_dataset_s", "job_data_s", "job_compute_s",
                         "job_eval_s") if c in g]
    times = pd.to_numeric(g["job_s"]).to_numpy(dtype=float)
    n = len(times)
    middle = g.iloc[np.argsort(times, kind="stable")[(n - 1) // 2:n // 2 + 1]]  # the median sitting(s)
    for column in parts:  # the median's parts, so that they add up to it
        row[column] = float(pd.to_numeric(middle[column]).mean())
    spread = MAD_TO_SD * float(np.median(np.abs(times - np.median(times))))
    half = t95(n - 1) * spread * math.sqrt(1 + 1 / n)
    if {"job_s_low", "job_s_high"} <= set(g):  # the sittings' own sampling, if it says more
        widths = (pd.to_numeric(g["job_s_high"]) - pd.to_numeric(g["job_s_low"])).dropna()
        half = max(half, float(widths.mean()) / 2 / math.sqrt(n)) if len(widths) else half
    row["job_s_low"], row["job_s_high"] = row["job_s"] - half, row["job_s"] + half
    if "job_fraction" in g:
        row["job_fraction"] = min(float(pd.to_numeric(g["job_fraction"]).sum()), 1.0)
    row["job_sittings"] = n
    return row


def _combined(g: pd.DataFrame, spread: tuple[float, int] | None) -> pd.Series:
    """The row of a Case measured by the processes in g (two or more, all ok); with no spread, as pooled from
    these processes alone."""
    if spread is None:
        logs = np.log(pd.to_numeric(g["images_per_s"]))
        spread = (float(logs.std(ddof=1)), len(g) - 1)
    sd, dof = spread
    row = g.iloc[0].copy()
    for column in g.columns:
        if is_numeric_dtype(g[column]) and not is_bool_dtype(g[column]) and g[column].notna().any():
            row[column] = g[column].median()
    logs = np.log(pd.to_numeric(g["images_per_s"]))
    centre, half = float(logs.mean()), t95(dof) * sd / math.sqrt(len(g))
    row["images_per_s"] = math.exp(centre)
    row["images_per_s_ci_low"], row["images_per_s_ci_high"] = math.exp(centre - half), math.exp(centre + half)
    row["images_per_s_ci_pct"] = 100 * (math.exp(half) - 1)
    row["repeat"] = np.nan
    row["processes"] = len(g)
    row["between_process_pct"] = 100 * (math.exp(sd) - 1)
    windows = _windows(g)
    for column in ("windows_s", "windows_images"):
        if column in g:
            row[column] = [w for ws in g[column] if isinstance(ws, list) for w in ws]
    if windows.quartiles:  # the spread of every window of every process
        row["images_per_s_p25"], _, row["images_per_s_p75"] = windows.quartiles
    row["images_per_s_p25"] = min(row["images_per_s_p25"], row["images_per_s"])  # the figure inside its spread
    row["images_per_s_p75"] = max(row["images_per_s_p75"], row["images_per_s"])
    row["images_per_s_spread_pct"] = 100 * (row["images_per_s_p75"] - row["images_per_s_p25"]) / row["images_per_s"]
    row["warnings"] = sorted({w for ws in g.get("warnings", []) if isinstance(ws, list) for w in ws})
    row["contended"] = bool(pd.Series(g["contended"]).fillna(False).astype(bool).any()) if "contended" in g else None
    return row
