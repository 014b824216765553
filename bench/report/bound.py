"""The input bound in words (bench/analysis/bound.py): where only a CPU was measured, how much faster any GPU could
train the tutorial pipeline on this host at most; beside a GPU's figure, how much of the DataLoader's rate it used.
Pure: the bound table in, sentences out."""
from __future__ import annotations

import pandas as pd

TUTORIAL_BATCH = 4


def _rate(x: float) -> str:
    return f"{x:,.0f}"


def _at_tutorial_batch(table: pd.DataFrame) -> pd.Series | None:
    """The row at the tutorial's batch, else at the smallest batch measured, with a CPU figure."""
    rows = table.dropna(subset=["bound"]).drop_duplicates(["machine", "batch_size"])
    if rows.empty:
        return None
    at = rows[rows["batch_size"] == TUTORIAL_BATCH]
    return (at if not at.empty else rows.sort_values("batch_size")).iloc[0]


def headline(table: pd.DataFrame, devices: str) -> str | None:
    """A CPU-only run's answer: the most a GPU could give, from the DataLoader's rate and the CPU's; None without
    an input bound measured."""
    r = _at_tutorial_batch(table)
    if r is None:
        return None
    settings = "the tutorial's own settings" if r["batch_size"] == TUTORIAL_BATCH else f"batch {int(r['batch_size'])}"
    return (f"Only {devices} was measured, so this run cannot say how much a GPU helps, but it bounds it: at "
            f"{settings} (tutorial pipeline), even an infinitely fast GPU could make the tutorial's training at most "
            f"{r['bound']:.2f}x faster on this machine: its DataLoader alone delivers {_rate(r['input_images_per_s'])} "
            f"images/s (batch {int(r['batch_size'])}, {_rate(r['input_low'])}-{_rate(r['input_high'])} at 95%) "
            f"against the CPU's {_rate(r['cpu_images_per_s'])} training through it.")


def findings(table: pd.DataFrame) -> list[str]:
    """The bound at every batch size, and each GPU's training rate against it."""
    if table.empty:
        return []
    out = []
    per_batch = table.dropna(subset=["bound"]).drop_duplicates(["machine", "batch_size"])
    if len(per_batch) > 1:
        out.append("Input bound by batch size (the tutorial's DataLoader alone against the CPU's best training "
                   "through it; the most any GPU could speed the tutorial pipeline up here): "
                   + "; ".join(f"batch {int(r['batch_size'])}: {_rate(r['input_images_per_s'])} vs "
                               f"{_rate(r['cpu_images_per_s'])} images/s, at most {r['bound']:.2f}x"
                               for _, r in per_batch.iterrows()) + ".")
    for device, rows in table.dropna(subset=["device_images_per_s"]).groupby("device"):
        parts = []
        for _, r in rows.iterrows():
            over = r["device_images_per_s"] > r["input_high"]
            parts.append(f"batch {int(r['batch_size'])}: {_rate(r['device_images_per_s'])} of "
                         f"{_rate(r['input_images_per_s'])} images/s ({100 * r['share_of_bound']:.0f}%"
                         + (", above the DataLoader's own rate: measured apart, they disagree" if over else "") + ")")
        out.append(f"Input bound ({device}, tutorial pipeline): its training rate against what the DataLoader alone "
                   "delivers on this host: " + "; ".join(parts) + ".")
    return out
