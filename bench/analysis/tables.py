"""Pure functions from the results table to the tables that answer: speed-ups, crossover, scaling, gaps.

Every function takes a DataFrame of Results (one row per Case, as `results_frame` makes) and
returns a DataFrame or plain data; nothing here draws or writes. `analyse` computes every table a
report needs once; the verdict (bench/report/findings.py), the charts and the report read that object.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.analysis import repeats
from bench.analysis.bound import input_bound
from bench.analysis.cost import cost_table
from bench.analysis.doubts import case_warnings, noisy_cases, time_outside_windows
from bench.analysis.frame import CONFIG, PLAIN, ok_rows
from bench.analysis.roofline import achieved_gflops
from bench.schema import INPUT, JOB

LEARNT_PCT = 20.0  # twice chance on ten classes: below it a Case did not train long enough to learn


def best_throughput(df: pd.DataFrame) -> pd.DataFrame:
    """Per machine, mode, device, pipeline, step variant, width and batch size: the best Case over
    thread counts."""
    ok = ok_rows(df).dropna(subset=["images_per_s"])
    if ok.empty:
        return ok
    idx = ok.groupby(CONFIG, dropna=False)["images_per_s"].idxmax()
    cols = CONFIG + ["threads", "images_per_s", "images_per_s_p25", "images_per_s_p75", "images_per_s_spread_pct"]
    cols += ["compile_s"] * ("compile_s" in ok) + ["images_per_s_mean"] * ("images_per_s_mean" in ok)
    return ok.loc[idx, cols].sort_values(CONFIG).reset_index(drop=True)


def counted_in_every_job(jobs: pd.DataFrame, column: str) -> bool:
    """Whether every job row has this part of its start-up (runs from before a part was counted lack it)."""
    return column in jobs and bool(jobs[column].notna().all())


def job_table(df: pd.DataFrame) -> pd.DataFrame:
    """The tutorial's job per machine and device: wall time and its parts, measured or projected, and the
    test accuracy reached after the part measured."""
    cols = ["machine", "device", "threads_used", "job_s", "job_s_low", "job_s_high", "job_startup_s", "job_import_s",
            "job_dataset_s", "job_data_s", "job_compute_s", "job_eval_s", "job_fraction", "job_projected",
            "job_sittings", "malloc_state", "epochs_completed", "test_accuracy_pct"]
    ok = ok_rows(df)
    if "job_s" not in ok:
        return pd.DataFrame(columns=cols)
    ok = ok[(ok["mode"] == JOB) & ok["job_s"].notna()]
    return ok[[c for c in cols if c in ok]].sort_values(["machine", "device"]).reset_index(drop=True)


def time_to_target(df: pd.DataFrame) -> pd.DataFrame:
    """Per machine and device, the Case that reached the target accuracy in the least training time
    (time-to-accuracy, as DAWNBench ranks), the tutorial's job included; none where no Case reached it."""
    cols = ["machine", "device", "mode", "pipeline", "variant", "batch_size", "threads", "target_accuracy_pct",
            "time_to_target_s"]
    ok = ok_rows(df)
    if "time_to_target_s" not in ok:
        return pd.DataFrame(columns=cols)
    ok = ok[ok["mode"].isin(["train", JOB]) & ok["time_to_target_s"].notna()]
    if ok.empty:
        return pd.DataFrame(columns=cols)
    idx = ok.groupby(["machine", "device", "target_accuracy_pct"])["time_to_target_s"].idxmin()
    return ok.loc[idx, cols].reset_index(drop=True)


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
    """Training Cases: test accuracy, epochs done and time to the target accuracy by batch size;
    `comparable` marks the Cases that ran every planned epoch (their accuracies compare: the same
    epochs, not the same seconds), `learnt` those above twice chance."""
    ok = ok_rows(df)
    ok = ok[ok["mode"] == "train"]
    cols = ["machine", "device", "pipeline", "variant", "width", "batch_size", "threads", "epochs_completed",
            "test_accuracy_pct", "time_to_target_s", "target_accuracy_pct", "train_s", "comparable", "learnt"]
    stopped = ok["stopped_by"] if "stopped_by" in ok else pd.Series("epochs", index=ok.index)
    ok = ok.assign(comparable=stopped.fillna("epochs").eq("epochs"),
                   learnt=ok["test_accuracy_pct"].ge(LEARNT_PCT) if "test_accuracy_pct" in ok else False)
    return ok[[c for c in cols if c in ok]].sort_values(["machine", "device", "pipeline", "batch_size"])


def inference_table(df: pd.DataFrame) -> pd.DataFrame:
    """Inference Cases: throughput and per-batch latency by batch size."""
    ok = ok_rows(df)
    ok = ok[ok["mode"] == "infer"]
    cols = ["machine", "device", "pipeline", "variant", "width", "batch_size", "threads", "images_per_s",
            "latency_ms_p50", "latency_ms_p99"]
    if "latency_calls" in ok and ok["latency_calls"].notna().any():  # runs from before it have none
        cols.append("latency_calls")
    return ok[[c for c in cols if c in ok]].sort_values(["machine", "device", "pipeline", "batch_size"]).reset_index(drop=True)


def variant_gain(df: pd.DataFrame) -> pd.DataFrame:
    """Each step variant (graphs, bf16, channels-last, torch.compile) over the plain eager step of the same
    configuration, best over threads, with the noise band from the spreads; a compiled step's
    compilation time, and after how many steps it pays for itself (`break_even_steps`; NaN when the
    compiled step is no faster)."""
    keys = ["machine", "mode", "device", "pipeline", "world_size", "width", "batch_size"]
    columns = keys + ["variant", "images_per_s", "eager_images_per_s", "gain", "low", "high", "compile_s",
                      "break_even_steps"]
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
        compile_s = pd.to_numeric(r.get("compile_s"), errors="coerce")  # None where the Case did not compile
        saved_per_step = r["batch_size"] / e["images_per_s"] - r["batch_size"] / r["images_per_s"]
        rows.append({**{k: r[k] for k in keys}, "variant": r["variant"], "images_per_s": r["images_per_s"],
                     "compile_s": compile_s,
                     "break_even_steps": compile_s / saved_per_step if saved_per_step > 0 else np.nan,
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


@dataclass(frozen=True)
class Analysis:
    """Every table a report needs, each computed once from one results frame."""

    frame: pd.DataFrame  # every Case, finished or not
    ok: pd.DataFrame  # the finished Cases, the tutorial's job left out (it has its own tables)
    jobs: pd.DataFrame
    time_to_target: pd.DataFrame
    costs: pd.DataFrame
    best: pd.DataFrame
    speedups: pd.DataFrame
    crossover: pd.DataFrame
    thread_scaling: pd.DataFrame
    pipeline_gap: pd.DataFrame
    accuracy: pd.DataFrame
    inference: pd.DataFrame
    variant_gain: pd.DataFrame
    data_parallel: pd.DataFrame
    achieved_gflops: pd.DataFrame
    gpu_usage: pd.DataFrame
    input_bound: pd.DataFrame  # the tutorial's DataLoader alone against each device's training (bench/analysis/bound.py)
    outside_windows: pd.DataFrame
    noisy: pd.DataFrame
    warnings: pd.DataFrame
    unfinished: pd.DataFrame


def analyse(df: pd.DataFrame) -> Analysis:
    """The tables behind the verdict, the charts and the report, from a results frame (with the
    columns `bench.analysis.roofline.with_ceilings` adds where the compute shares are wanted)."""
    df = repeats.collapse(df)  # a Case's repeats as one figure, with the interval of its processes
    cases = df[~df["mode"].isin([JOB, INPUT])]  # the throughput tables are of the sweep's step Cases
    sp, best, jobs, to_target = speedups(cases), best_throughput(cases), job_table(df), time_to_target(df)
    ok = ok_rows(cases)
    return Analysis(frame=df, ok=ok, jobs=jobs, time_to_target=to_target,
                    costs=cost_table(ok_rows(df), jobs, best, to_target), best=best, speedups=sp,
                    crossover=crossover_batch_size(sp), thread_scaling=thread_scaling(cases),
                    pipeline_gap=pipeline_gap(cases), accuracy=accuracy_by_batch(cases),
                    inference=inference_table(cases), variant_gain=variant_gain(cases),
                    data_parallel=data_parallel_scaling(cases), achieved_gflops=achieved_gflops(cases),
                    gpu_usage=gpu_usage(cases), input_bound=input_bound(df, best),
                    outside_windows=time_outside_windows(df), noisy=noisy_cases(df),
                    warnings=case_warnings(df),
                    unfinished=df[df["status"] != "ok"][["key", "status", "error"]])
