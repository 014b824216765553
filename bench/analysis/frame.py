"""The rows of a results table that the analysis counts, and how each Case ran its step: shared by
the analysis, the compute shares, the run's summary table and the export."""
from __future__ import annotations

import math

import pandas as pd

from bench.schema import VARIANTS

CONFIG = ["machine", "mode", "device", "pipeline", "variant", "world_size", "width", "batch_size"]
PLAIN = "eager"  # the tutorial's own step: no graphs, fp32, contiguous


def step_variant(df: pd.DataFrame) -> pd.Series:
    """How each Case ran its step, e.g. "eager", "eager+bf16", "graphs+channels-last", "compile"."""
    def value(variant, x):
        missing = x is None or (isinstance(x, float) and math.isnan(x))
        return variant.plain if missing else x

    def name(row: dict) -> str:
        parts = [(v, value(v, row.get(v.field))) for v in VARIANTS]
        changed = [(v, x) for v, x in parts if x != v.plain]
        program = next((v.name(x) for v, x in changed if v.program), PLAIN)
        return program + "".join(v.name(x) for v, x in changed if not v.program)

    return pd.Series([name(row) for row in df.to_dict("records")], index=df.index, dtype=object)


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The Cases that measured something, with a `machine` label (one per run's host) if absent
    and the step `variant` they ran."""
    out = df[df["status"] == "ok"].copy()
    if "machine" not in out:
        out["machine"] = ""
    out["variant"] = step_variant(out)
    out["world_size"] = (out["world_size"].fillna(1) if "world_size" in out else pd.Series(1, index=out.index)).astype(int)
    return out
