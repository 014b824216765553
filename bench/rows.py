"""The rows of a results table that the analysis counts, and how each Case ran its step: shared by
the analysis, the compute shares, the run's summary table and the export."""
from __future__ import annotations

import pandas as pd

CONFIG = ["machine", "mode", "device", "pipeline", "variant", "world_size", "width", "batch_size"]
PLAIN = "eager"  # the tutorial's own step: no graphs, fp32, contiguous


def step_variant(df: pd.DataFrame) -> pd.Series:
    """How each Case ran its step, e.g. "eager", "eager+bf16", "graphs+channels-last", "compile"."""
    def column(name, default):
        return df[name].fillna(default) if name in df else pd.Series(default, index=df.index)

    modes = df["compile_mode"] if "compile_mode" in df else pd.Series(None, index=df.index, dtype=object)
    compiled = modes.map(
        lambda m: PLAIN if m is None or pd.isna(m) else "compile" if m == "default" else f"compile-{m}")
    base = column("cuda_graphs", False).combine(compiled, lambda g, c: "graphs" if g else c)
    amp = column("amp", "off").map(lambda a: "" if a == "off" else f"+{a}")
    layout = column("memory_format", "contiguous").map(lambda m: "+channels-last" if m == "channels_last" else "")
    malloc = column("malloc", "default").map(lambda m: "+malloc-tuned" if m == "tuned" else "")
    return base + amp + layout + malloc


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The Cases that measured something, with a `machine` label (one per run's host) if absent
    and the step `variant` they ran."""
    out = df[df["status"] == "ok"].copy()
    if "machine" not in out:
        out["machine"] = ""
    out["variant"] = step_variant(out)
    out["world_size"] = (out["world_size"].fillna(1) if "world_size" in out else pd.Series(1, index=out.index)).astype(int)
    return out
