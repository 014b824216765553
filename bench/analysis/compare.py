"""Two sweep runs side by side, Case by Case: what got slower beyond the threshold and the noise.

Pure: takes the two runs' frames, returns a Comparison; the CLI prints it and sets the exit status.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.analysis import repeats
from bench.sweep.options import OPTIONS


@dataclass(frozen=True)
class Metric:
    higher_is_better: bool
    low: str | None = None  # columns bounding the metric's spread (p25, p75), when one is recorded
    high: str | None = None
    ci_low: str | None = None  # its 95% confidence interval, preferred to the spread where both runs have it
    ci_high: str | None = None


METRICS = {
    "images_per_s": Metric(True, "images_per_s_p25", "images_per_s_p75", "images_per_s_ci_low", "images_per_s_ci_high"),
    "step_ms_p50": Metric(False), "step_ms_p90": Metric(False), "step_ms_p99": Metric(False),
    "latency_ms_p50": Metric(False), "latency_ms_p90": Metric(False), "latency_ms_p99": Metric(False),
}

COLUMNS = ["key", "baseline", "new", "ratio", "low", "high", "change_pct", "verdict"]


@dataclass
class Comparison:
    metric: str
    threshold_pct: float
    table: pd.DataFrame  # COLUMNS, one row per Case in both runs
    only_baseline: list[str]
    only_new: list[str]

    @property
    def regressions(self) -> pd.DataFrame:
        return self.table[self.table["verdict"].str.startswith("REGRESSION")]


class CompareError(Exception):
    """The two runs cannot be compared on this metric."""


def _verdict(metric: Metric, ratio: float, low: float, high: float, threshold: float) -> str:
    """`ratio` is new / baseline; `low`..`high` its band from the spreads (NaN when none is recorded)."""
    worse = ratio < 1 - threshold if metric.higher_is_better else ratio > 1 + threshold
    better = ratio > 1 + threshold if metric.higher_is_better else ratio < 1 - threshold
    if np.isnan(low):  # no spread recorded for this metric: the threshold alone decides
        beyond_noise_worse = beyond_noise_better = True
    else:
        beyond_noise_worse = high < 1 if metric.higher_is_better else low > 1
        beyond_noise_better = low > 1 if metric.higher_is_better else high < 1
    if worse and beyond_noise_worse:
        return "REGRESSION"
    if better and beyond_noise_better:
        return "improved"
    if worse or better:
        return "within noise"
    return "same"


def compare_runs(baseline: pd.DataFrame, new: pd.DataFrame, metric: str = "images_per_s",
                 threshold_pct: float = 10.0) -> Comparison:
    """Matches Cases by key. A Case ok in the baseline that did not finish in the new run is a regression;
    one that did not finish in the baseline cannot be compared and is listed with its status."""
    m = METRICS[metric]
    threshold = threshold_pct / 100
    baseline, new = repeats.collapse(baseline), repeats.collapse(new)  # repeats: one figure per Case, each run
    base, cur = baseline.set_index("key"), new.set_index("key")
    common = [k for k in base.index if k in cur.index]
    if not common:
        raise CompareError(f"the runs share no Case (e.g. baseline {base.index[0]} vs new {cur.index[0]}): compare "
                           f"runs of the same sweep options, which make the same Case keys")
    rows = []
    for key in common:
        b, n = base.loc[key], cur.loc[key]
        row = dict.fromkeys(COLUMNS, np.nan) | {"key": key}
        if b["status"] != "ok":
            rows.append(row | {"verdict": f"not compared: baseline {b['status']}"})
        elif n["status"] != "ok":
            rows.append(row | {"baseline": b.get(metric), "verdict": f"REGRESSION: was ok, now {n['status']}"})
        elif pd.isna(b.get(metric)) or pd.isna(n.get(metric)):
            rows.append(row | {"verdict": f"not compared: no {metric}"})
        else:
            ratio = n[metric] / b[metric]
            low = high = np.nan
            lo, hi = m.low, m.high
            if m.ci_low and not any(pd.isna(r.get(c)) for r in (b, n) for c in (m.ci_low, m.ci_high)):
                lo, hi = m.ci_low, m.ci_high  # overlapping intervals: no difference, however large the ratio
            if lo:
                low, high = n[lo] / b[hi], n[hi] / b[lo]
            rows.append(row | {"baseline": b[metric], "new": n[metric], "ratio": ratio, "low": low, "high": high,
                               "change_pct": 100 * (ratio - 1),
                               "verdict": _verdict(m, ratio, low, high, threshold)})
    table = pd.DataFrame(rows, columns=COLUMNS)
    measured = table["verdict"].isin(["REGRESSION", "improved", "within noise", "same"])
    if common and not measured.any() and not table["verdict"].str.startswith("REGRESSION").any():
        raise CompareError(f"--metric {metric}: no Case has it in both runs "
                           f"(latency_ms_* is measured by infer Cases, the others by every Case)")
    return Comparison(metric, threshold_pct, table,
                      only_baseline=[k for k in base.index if k not in cur.index],
                      only_new=[k for k in cur.index if k not in base.index])


BUDGET = tuple(o.name for o in OPTIONS if o.compared == "budget")  # two runs must share these (bench/sweep/options.py)
CASE_SETTINGS = tuple(sorted(o.name for o in OPTIONS if o.compared == "case"))  # named in this order


def differences(baseline: pd.DataFrame, new: pd.DataFrame, baseline_env: dict, new_env: dict) -> list[str]:
    """What makes two runs not comparable, one phrase each (empty when they are): the data set, the
    budget, the torch version, the device names, and any setting of a Case found in both."""
    def values(frame: pd.DataFrame, column: str) -> list[str]:
        if column not in frame:
            return []
        return sorted({"none" if pd.isna(v) else f"{v:g}" if isinstance(v, float) else str(v) for v in frame[column]})

    out = []
    for column, what in (("dataset", "data set"), *((c, f"budget {c}") for c in BUDGET), ("device", "devices")):
        a, b = values(baseline, column), values(new, column)
        if a and b and a != b:
            out.append(f"{what}: {', '.join(a)} vs {', '.join(b)}")
    states = [values(f, "malloc_state") or ["not recorded (unpinned)"] for f in (baseline, new)]
    if states[0] != states[1]:
        out.append(f"allocator state: {', '.join(states[0])} vs {', '.join(states[1])}")
    for field, what in (("cpu_model", "CPU"), ("cpu_isa", "CPU vector instructions"),
                        ("cpu_logical_cores", "logical cores")):
        a, b = baseline_env.get(field), new_env.get(field)
        if a is not None and b is not None and a != b:
            out.append(f"machine: {what} {a} vs {b}")
    gpus = [None if env.get("gpus") is None else sorted(g.get("name", "?") for g in env["gpus"])
            for env in (baseline_env, new_env)]
    if None not in gpus and gpus[0] != gpus[1]:
        out.append(f"machine: GPUs {', '.join(gpus[0]) or 'none'} vs {', '.join(gpus[1]) or 'none'}")
    if baseline_env.get("torch") and new_env.get("torch") and baseline_env["torch"] != new_env["torch"]:
        out.append(f"torch: {baseline_env['torch']} vs {new_env['torch']}")
    both = baseline.merge(new, on="key", how="inner", suffixes=("_a", "_b")).set_index("key")
    for column in CASE_SETTINGS:
        if f"{column}_a" not in both or f"{column}_b" not in both:
            continue
        differ = both[(both[f"{column}_a"] != both[f"{column}_b"]) & both[[f"{column}_a", f"{column}_b"]].notna().all(axis=1)]
        if len(differ):
            row = differ.iloc[0]
            out.append(f"Case setting {column}: {row[f'{column}_a']} vs {row[f'{column}_b']} "
                       f"(e.g. {differ.index[0]}{f' and {len(differ) - 1} more' if len(differ) > 1 else ''})")
    return out


def as_record(c: Comparison, differ: list[str]) -> dict:
    """The comparison as `bench compare --json` prints it: every figure exact, NaN as null."""
    table = c.table.astype(object).where(c.table.notna(), None)
    return {"metric": c.metric, "higher_is_better": METRICS[c.metric].higher_is_better,
            "threshold_pct": c.threshold_pct, "differences": differ, "cases": table.to_dict("records"),
            "only_in_baseline": list(c.only_baseline), "only_in_new": list(c.only_new),
            "regressions": list(c.regressions["key"])}


def render(c: Comparison) -> str:
    """The table a person reads, then the Cases in one run only, then the one-line summary."""
    m = METRICS[c.metric]
    shown = c.table.copy()
    for col in ("baseline", "new"):
        shown[col] = shown[col].map(lambda v: "-" if pd.isna(v) else f"{v:,.2f}")
    shown["ratio"] = shown["ratio"].map(lambda v: "-" if pd.isna(v) else f"{v:.3f}")
    shown["noise band"] = [("no spread recorded" if pd.isna(lo) else f"{lo:.3f}-{hi:.3f}") if not pd.isna(r) else "-"
                           for lo, hi, r in zip(c.table["low"], c.table["high"], c.table["ratio"])]
    shown["change"] = shown["change_pct"].map(lambda v: "-" if pd.isna(v) else f"{v:+.1f}%")
    shown = shown[["key", "baseline", "new", "ratio", "noise band", "change", "verdict"]]
    direction = "higher is better" if m.higher_is_better else "lower is better"
    lines = [f"{c.metric} ({direction}); regression: worse by more than {c.threshold_pct:g}% and beyond the noise "
             f"band (the ratio of the two medians' 95% intervals where both runs recorded them, else new p25-p75 "
             f"over baseline p75-p25: overlapping intervals are no difference)", "", shown.to_string(index=False) if len(shown) else "(none)"]
    for title, keys in (("only in the baseline", c.only_baseline), ("only in the new run", c.only_new)):
        if keys:
            lines += ["", f"{len(keys)} Case(s) {title} (not counted):"] + [f"  {k}" for k in keys]
    compared = int(c.table["ratio"].notna().sum())
    lines += ["", f"bench compare: {len(c.regressions)} regression(s) in {len(c.table)} Cases found in both runs "
                  f"({compared} with {c.metric} in both)"]
    return "\n".join(lines)
