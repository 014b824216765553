"""What a Case achieves against what its device can do: the model's FLOP/s against the matmul ceiling
measured in the same precision (bench/running/ceilings.py measures the ceilings; environment.json records them).
Pure functions from the results table, like bench/analysis/tables.py.
"""
from __future__ import annotations

import pandas as pd

from bench.analysis.frame import CONFIG, ok_rows

# the precision of a Case's float32 matrix products, by its process's float32 matmul precision setting
FLOAT32_MATMUL = {"highest": "fp32", "high": "tf32", "medium": "bf16"}


def matmul_precision(df: pd.DataFrame, float32_setting: str | None = "highest") -> pd.Series:
    """The precision most of each Case's multiply-adds ran in: bf16 under `amp=bf16`; on CUDA, the math of cuDNN's
    float32 convolutions (`conv_math`: ~91% of the model's multiply-adds; TF32 by torch's default, and so for a
    CUDA row that predates the field), whatever the matrix products did; on a CPU, what the float32 matmul
    precision setting its process ran with makes of float32 ('highest': strict fp32)."""
    float32 = FLOAT32_MATMUL.get(float32_setting or "highest", "fp32")
    column = (lambda name, default: df[name] if name in df else pd.Series(default, index=df.index, dtype=object))
    amp, device, conv = column("amp", "off").fillna("off"), column("device", "cpu"), column("conv_math", None)

    def one(a, d, c) -> str:
        if a == "bf16":
            return "bf16"
        if str(d).startswith("cuda"):
            return c if isinstance(c, str) else "tf32"
        return float32
    return pd.Series([one(a, d, c) for a, d, c in zip(amp, device, conv)], index=df.index, dtype=object)


def with_ceilings(frame: pd.DataFrame, environment: dict) -> pd.DataFrame:
    """A run's rows with what its environment.json says they compare against: the model's FLOPs per
    image, the precision of each Case's matmuls and its device's measured matmul rate in that precision
    (`ceiling_gflops`, NaN when not measured, with the reason in `ceiling_missing`)."""
    flops = environment.get("model_flops_per_image") or {}
    kind = frame["mode"].map({"train": "train_step", "infer": "forward"})
    per_image = [flops.get(f"{w:g}", {}).get(k) for w, k in zip(frame["width"], kind)]
    ceilings = environment.get("ceilings") or {}
    rates, missing = ceilings.get("matmul_gflops") or {}, ceilings.get("matmul_missing") or {}
    precision = matmul_precision(frame, environment.get("float32_matmul_precision"))
    gflops = [rates.get(d, {}).get(p) for d, p in zip(frame["device"], precision)]
    why = [None if g is not None else missing.get(d, {}).get(p) or ceilings.get("worker_error")
           or "not measured in this run" for d, p, g in zip(frame["device"], precision, gflops)]
    numbers = dict(index=frame.index, dtype=object)
    return frame.assign(flops_per_image=pd.to_numeric(pd.Series(per_image, **numbers)),
                        ceiling_precision=precision,
                        ceiling_gflops=pd.to_numeric(pd.Series(gflops, **numbers)).astype(float),
                        ceiling_missing=why)


def achieved_gflops(df: pd.DataFrame) -> pd.DataFrame:
    """Per Case: model FLOPs per image x images/s, and its share of its device's measured matmul rate in
    the precision the Case ran in (an amp=bf16 Case against bf16, never fp32; NaN when that one is unknown).

    Needs the columns `with_ceilings` adds from each run's environment.json; without them the table is empty.
    """
    cols = CONFIG + ["threads", "images_per_s", "gflops", "ceiling_precision", "ceiling_gflops", "pct_of_ceiling",
                     "ceiling_missing"]
    ok = ok_rows(df)
    if "flops_per_image" not in ok or ok["flops_per_image"].isna().all():
        return pd.DataFrame(columns=cols)
    ok = ok.dropna(subset=["images_per_s", "flops_per_image"]).copy()
    ok["gflops"] = ok["flops_per_image"] * ok["images_per_s"] / 1e9
    ok["pct_of_ceiling"] = 100 * ok["gflops"] / ok["ceiling_gflops"]
    return ok[cols].sort_values(CONFIG).reset_index(drop=True)
