"""Pure functions from the results table to the tables that answer: speed-ups, crossover, scaling, gaps.

Every function takes a DataFrame of Results (one row per Case, as `results_frame` makes) and
returns a DataFrame or plain data; nothing here draws or writes. The verdict's sentences are made
from these tables in bench/findings.py.
"""
from __future__ import annotations


import numpy as np
import pandas as pd

SPREAD_WARN_PCT = 10.0
CONFIG = ["machine", "mode", "device", "pipeline", "variant", "world_size", "width", "batch_size"]
PLAIN = "eager"  # the tutorial's own step: no graphs, fp32, contiguous


def step_variant(df: pd.DataFrame) -> pd.Series:
    """How each Case ran its step, e.g. "eager", "eager+bf16", "graphs+channels-last"."""
    def column(name, default):
        return df[name].fillna(default) if name in df else pd.Series(default, index=df.index)

    base = column("cuda_graphs", False).map(lambda g: "graphs" if g else PLAIN)
    amp = column("amp", "off").map(lambda a: "" if a == "off" else f"+{a}")
    layout = column("memory_format", "contiguous").map(lambda m: "+channels-last" if m == "channels_last" else "")
    return base + amp + layout


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The Cases that measured something, with a `machine` label (one per run's host) if absent
    and the step `variant` they ran."""
    out = df[df["status"] == "ok"].copy()
    if "machine" not in out:
        out["machine"] = ""
    out["variant"] = step_variant(out)
    out["world_size"] = (out["world_size"].fillna(1) if "world_size" in out else pd.Series(1, index=out.index)).astype(int)
    return out


def best_throughput(df: pd.DataFrame) -> pd.DataFrame:
    """Per machine, mode, device, pipeline, step variant, width and batch size: the best Case over
    thread counts."""
    ok = ok_rows(df).dropna(subset=["images_per_s"])
    if ok.empty:
        return ok
    idx = ok.groupby(CONFIG, dropna=False)["images_per_s"].idxmax()
    cols = CONFIG + ["threads", "images_per_s", "images_per_s_p25", "images_per_s_p75", "images_per_s_spread_pct"]
    return ok.loc[idx, cols].sort_values(CONFIG).reset_index(drop=True)


def speedups(df: pd.DataFrame) -> pd.DataFrame:
    """Each accelerator step variant over the best CPU configuration (over threads and variants) at
    the same batch size, pipeline and width.

    `low`/`high` bound the ratio by the spreads (accelerator p25 / CPU p75, p75 / p25).
    """
    keys = ["machine", "mode", "pipeline", "world_size", "width", "batch_size"]
    columns = keys + ["device", "variant", "cpu_threads", "cpu_variant", "device_images_per_s", "cpu_images_per_s",
                      "speedup", "low", "high"]
    best = best_throughput(df)
    if best.empty:
        return pd.DataFrame(columns=columns)
    cpu = best[best["device"] == "cpu"]
    cpu = cpu.loc[cpu.groupby(keys, dropna=False)["images_per_s"].idxmax()].set_index(keys)
    acc = best[best["device"] != "cpu"]
    rows = []
    for _, r in acc.iterrows():
        key = tuple(r[k] for k in keys)
        if key not in cpu.index:
            continue
        c = cpu.loc[key]
        rows.append({**{k: r[k] for k in keys}, "device": r["device"], "variant": r["variant"],
                     "cpu_threads": c["threads"], "cpu_variant": c["variant"],
                     "device_images_per_s": r["images_per_s"], "cpu_images_per_s": c["images_per_s"],
                     "speedup": r["images_per_s"] / c["images_per_s"],
                     "low": r["images_per_s_p25"] / c["images_per_s_p75"],
                     "high": r["images_per_s_p75"] / c["images_per_s_p25"]})
    return pd.DataFrame(rows, columns=columns)


def crossover_batch_size(speedup: pd.DataFrame) -> pd.DataFrame:
    """Per machine, mode, device, pipeline, variant and width: the smallest batch size from which the
    accelerator is faster beyond the noise (`low` > 1) at that and every larger batch size; NaN when it never is."""
    keys = ["machine", "mode", "device", "pipeline", "variant", "world_size", "width"]
    rows = []
    for key, group in speedup.groupby(keys, dropna=False):
        group = group.sort_values("batch_size")
        faster = (group["low"] > 1.0).to_numpy()
        crossover = np.nan
        for i in range(len(group)):
            if faster[i:].all():
                crossover = group["batch_size"].iloc[i]
                break
        rows.append(dict(zip(keys, key), crossover_batch_size=crossover))
    return pd.DataFrame(rows, columns=keys + ["crossover_batch_size"])


def thread_scaling(df: pd.DataFrame) -> pd.DataFrame:
    """CPU speed-up over 1 thread and parallel efficiency (speed-up / threads)."""
    ok = ok_rows(df)
    ok = ok[(ok["device"] == "cpu") & ok["images_per_s"].notna()]
    keys = ["machine", "mode", "pipeline", "variant", "world_size", "width", "batch_size"]
    one = ok[ok["threads"] == 1].set_index(keys)["images_per_s"]
    out = ok[keys + ["threads", "images_per_s"]].copy()
    out["speedup"] = [r.images_per_s / one.get(tuple(r[k] for k in keys), np.nan) for _, r in out.iterrows()]
    out["efficiency"] = out["speedup"] / out["threads"]
    return out.sort_values(keys + ["threads"]).reset_index(drop=True)


def pipeline_gap(df: pd.DataFrame) -> pd.DataFrame:
    """`resident` over `tutorial` throughput at the same everything else: how much the input pipeline costs."""
    ok = ok_rows(df)
    keys = ["machine", "mode", "device", "variant", "world_size", "width", "batch_size", "threads"]
    ok = ok.assign(threads=ok["threads"].fillna(-1))
    wide = ok.pivot_table(index=keys, columns="pipeline", values="images_per_s", aggfunc="max")
    if not {"tutorial", "resident"} <= set(wide.columns):
        return pd.DataFrame(columns=keys + ["tutorial", "resident", "gap"])
    wide = wide.dropna(subset=["tutorial", "resident"]).reset_index()
    wide["gap"] = wide["resident"] / wide["tutorial"]
    wide["threads"] = wide["threads"].replace(-1, np.nan)
    return wide[keys + ["tutorial", "resident", "gap"]]


def accuracy_by_batch(df: pd.DataFrame) -> pd.DataFrame:
    """Training Cases: test accuracy, epochs done and time to the target accuracy by batch size."""
    ok = ok_rows(df)
    ok = ok[ok["mode"] == "train"]
    cols = ["machine", "device", "pipeline", "variant", "width", "batch_size", "threads", "epochs_completed",
            "test_accuracy_pct", "time_to_target_s", "target_accuracy_pct", "train_s"]
    return ok[[c for c in cols if c in ok]].sort_values(["machine", "device", "pipeline", "batch_size"])


def inference_table(df: pd.DataFrame) -> pd.DataFrame:
    """Inference Cases: throughput and per-batch latency by batch size."""
    ok = ok_rows(df)
    ok = ok[ok["mode"] == "infer"]
    cols = ["machine", "device", "pipeline", "variant", "width", "batch_size", "threads", "images_per_s",
            "latency_ms_p50", "latency_ms_p99"]
    return ok[cols].sort_values(["machine", "device", "pipeline", "batch_size"]).reset_index(drop=True)


# the precision of a Case's float32 matrix products, by its process's float32 matmul precision setting
FLOAT32_MATMUL = {"highest": "fp32", "high": "tf32", "medium": "bf16"}


def matmul_precision(df: pd.DataFrame, float32_setting: str | None = "highest") -> pd.Series:
    """The precision each Case's matrix products ran in: bf16 under `amp=bf16`, else what the float32
    matmul precision setting its process ran with makes of float32 ('highest': strict fp32)."""
    float32 = FLOAT32_MATMUL.get(float32_setting or "highest", "fp32")
    amp = df["amp"].fillna("off") if "amp" in df else pd.Series("off", index=df.index)
    return amp.map(lambda a: "bf16" if a == "bf16" else float32)


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


def variant_gain(df: pd.DataFrame) -> pd.DataFrame:
    """Each step variant (graphs, bf16, channels-last) over the plain eager step of the same
    configuration, best over threads, with the noise band from the spreads."""
    keys = ["machine", "mode", "device", "pipeline", "world_size", "width", "batch_size"]
    columns = keys + ["variant", "images_per_s", "eager_images_per_s", "gain", "low", "high"]
    best = best_throughput(df)
    if best.empty:
        return pd.DataFrame(columns=columns)
    plain = best[best["variant"] == PLAIN].set_index(keys)
    rows = []
    for _, r in best[best["variant"] != PLAIN].iterrows():
        key = tuple(r[k] for k in keys)
        if key not in plain.index:
            continue
        e = plain.loc[key]
        rows.append({**{k: r[k] for k in keys}, "variant": r["variant"], "images_per_s": r["images_per_s"],
                     "eager_images_per_s": e["images_per_s"], "gain": r["images_per_s"] / e["images_per_s"],
                     "low": r["images_per_s_p25"] / e["images_per_s_p75"],
                     "high": r["images_per_s_p75"] / e["images_per_s_p25"]})
    return pd.DataFrame(rows, columns=columns)


def gpu_usage(df: pd.DataFrame) -> pd.DataFrame:
    """CUDA Cases sampled through NVML: mean utilisation and power, energy per epoch, images per joule."""
    cols = CONFIG + ["threads", "images_per_s", "gpu_util_pct", "gpu_power_w", "gpu_energy_j_per_epoch",
                     "images_per_j"]
    ok = ok_rows(df)
    if "gpu_power_w" not in ok:
        return pd.DataFrame(columns=cols)
    ok = ok.dropna(subset=["gpu_power_w"]).copy()
    ok["images_per_j"] = ok["images_per_s"] / ok["gpu_power_w"]
    return ok[cols].sort_values(CONFIG).reset_index(drop=True)


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


def data_parallel_scaling(df: pd.DataFrame) -> pd.DataFrame:
    """Training Cases by world size, against one process (world size 1) of the same device, pipeline,
    variant and width: weak scaling at the same per-rank batch and threads per rank, strong scaling at
    the same global batch, and `vs_best_one_process`: over the best single process at that global
    batch, whatever its thread count (on a CPU: the same cores used by one process instead of several).
    """
    keys = ["machine", "device", "pipeline", "variant", "width"]
    cols = keys + ["world_size", "threads", "batch_size", "global_batch_size", "images_per_s", "weak_efficiency",
                   "strong_efficiency", "vs_best_one_process", "allreduce_pct"]
    ok = ok_rows(df)
    ok = ok[(ok["mode"] == "train") & ok["images_per_s"].notna()]
    if (ok["world_size"] <= 1).all():
        return pd.DataFrame(columns=cols)
    ok = ok.assign(global_batch_size=ok["batch_size"] * ok["world_size"],
                   threads_key=ok["threads"].fillna(-1),
                   allreduce_pct=ok["allreduce_pct"] if "allreduce_pct" in ok else np.nan)
    one = ok[ok["world_size"] == 1]
    same_threads = one.set_index(keys + ["threads_key", "batch_size"])["images_per_s"]
    best_one = one.groupby(keys + ["batch_size"], dropna=False)["images_per_s"].max()
    rows = []
    for _, r in ok.iterrows():
        k = tuple(r[c] for c in keys)
        weak = same_threads.get(k + (r["threads_key"], r["batch_size"]), np.nan)
        strong = same_threads.get(k + (r["threads_key"], r["global_batch_size"]), np.nan)
        best = best_one.get(k + (r["global_batch_size"],), np.nan)
        n = r["world_size"]
        rows.append({**{c: r[c] for c in cols if c in r and c not in ("weak_efficiency", "strong_efficiency",
                                                                       "vs_best_one_process")},
                     "weak_efficiency": r["images_per_s"] / (n * weak),
                     "strong_efficiency": r["images_per_s"] / (n * strong),
                     "vs_best_one_process": r["images_per_s"] / best})
    return pd.DataFrame(rows, columns=cols).sort_values(keys + ["batch_size", "threads", "world_size"]) \
        .reset_index(drop=True)


def noisy_cases(df: pd.DataFrame) -> pd.DataFrame:
    """Cases whose throughput spread (IQR) exceeds 10% of the median."""
    ok = ok_rows(df)
    return ok[ok["images_per_s_spread_pct"] > SPREAD_WARN_PCT][["key", "images_per_s_spread_pct"]]
