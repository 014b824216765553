"""The report's opening sentences, each made from the analysis tables (bench/analysis/tables.py): the headline
at the tutorial's settings, the best settings, the crossover, what limits each device, and the caveats.
Pure: an Analysis in, a Verdict out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bench.analysis.frame import PLAIN
from bench.analysis.tables import Analysis
from bench.report import answer, bound
from bench.report.answer import threads_phrase
from bench.report.caveats import caveats


@dataclass
class Verdict:
    """The report's opening: a headline and the sentences behind it, all from the tables."""

    headline: str
    findings: list[str] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)


def _fmt(x: float) -> str:
    return f"{x:.2f}x" if x < 10 else f"{x:.0f}x"


def verdict(a: Analysis, skipped_devices: dict[str, str] | None = None) -> Verdict:
    """Plain-language answer: the tutorial's own settings, the best settings, the crossover, the limits."""
    sp_train = a.speedups[a.speedups["mode"] == "train"]
    train = a.ok[(a.ok["mode"] == "train") & a.ok["images_per_s"].notna()]
    if not sp_train.empty:
        headline, findings = _gpu_answer(sp_train, a.crossover[a.crossover["mode"] == "train"])
    elif not train.empty:
        headline, findings = _cpu_only_answer(train, a.input_bound)
    else:
        headline, findings = "No training Case measured a throughput, so there is nothing to compare.", []
    lead = []
    if not a.jobs.empty:  # the asker's own job first, then the answer to the title (a GPU's gain, or its bound)
        lead = [headline] if sp_train.size or train.size else []
        headline = answer.job_headline(a.jobs)
    # speed first (the job, its cost, the title's answer, its bound, the CPU), accuracy after it
    findings = (lead + answer.job_findings(a.jobs) + answer.cost_findings(a.costs) + findings
                + bound.findings(a.input_bound) + _cpu_findings(a) + _variant_findings(a) + _scaling_findings(a)
                + answer.target_findings(a.time_to_target, a.ok))
    return Verdict(headline, findings, caveats(a, skipped_devices or {}))


def _tutorial_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows at the tutorial's own settings: batch 4, its pipeline, width 1, the eager step, one process."""
    return frame[(frame["batch_size"] == 4) & (frame["pipeline"] == "tutorial") & (frame["width"] == 1)
                 & (frame["variant"] == PLAIN) & (frame["world_size"] == 1)]


def _gpu_answer(sp_train: pd.DataFrame, crossover: pd.DataFrame) -> tuple[str, list[str]]:
    tut = _tutorial_rows(sp_train)
    best = sp_train.loc[sp_train["speedup"].idxmax()]
    if not tut.empty:
        t = tut.iloc[0]
        word = "faster" if t["low"] > 1 else ("slower" if t["high"] < 1 else "no faster, within the noise,")
        headline = (f"At the tutorial's own settings (batch 4, tutorial pipeline) the {t['device']} trains "
                    f"{_fmt(t['speedup'])} as fast as the best CPU configuration: {word}.")
    else:
        headline = f"The best GPU speed-up measured is {_fmt(best['speedup'])}."
    findings = [f"Best speed-up: {_fmt(best['speedup'])} ({best['device']}, {best['pipeline']} pipeline, "
                f"{_step(best['variant'])[2:] or 'eager step'}, batch {int(best['batch_size'])}, "
                f"width {best['width']:g}; "
                f"{best['device_images_per_s']:.0f} vs {best['cpu_images_per_s']:.0f} images/s)."]
    for _, c in crossover.iterrows():
        where = (f"from batch {int(c['crossover_batch_size'])}" if not np.isnan(c["crossover_batch_size"])
                 else "at no batch size measured")
        findings.append(f"Crossover ({c['device']}, {c['pipeline']} pipeline{_step(c['variant'])}, "
                        f"width {c['width']:g}): "
                        f"faster than the CPU beyond the noise {where}.")
    return headline, findings


def _cpu_only_answer(train: pd.DataFrame, input_bound: pd.DataFrame) -> tuple[str, list[str]]:
    devices = sorted(train["device"].unique())
    headline = (bound.headline(input_bound, ", ".join(devices))
                or f"Only {', '.join(devices)} was measured, so this run cannot say whether a GPU helps; "
                   f"it answers what the CPU can: threads, input pipeline and batch size.")
    best = train.loc[train["images_per_s"].idxmax()]
    findings = [f"Fastest training configuration: {best['pipeline']} pipeline{_step(best['variant'])}, batch "
                f"{int(best['batch_size'])}, {threads_phrase(best['threads'])}: {best['images_per_s']:.0f} images/s."]
    tut = _tutorial_rows(train)
    if not tut.empty:
        t = tut.loc[tut["images_per_s"].idxmax()]
        findings.append(f"At the tutorial's own settings (batch 4, tutorial pipeline): {t['images_per_s']:.0f} "
                        f"images/s ({threads_phrase(t['threads'])}).")
    return headline, findings


def _contended(rows: pd.DataFrame) -> str:
    """' (rests on contended Cases)' when any of `rows` was measured beside busy neighbours."""
    flags = rows["contended"] if "contended" in rows else pd.Series(dtype=bool)
    return " (rests on contended Cases: see the caveats)" if flags.fillna(False).astype(bool).any() else ""


def _step(variant: str) -> str:
    """", graphs+bf16 step" for a variant; nothing for the plain eager step, which needs no mention."""
    return "" if variant == PLAIN else f", {variant} step"


def _cpu_findings(a: Analysis) -> list[str]:
    out = []
    gap = a.pipeline_gap
    gap = gap[(gap["mode"] == "train") & (gap["variant"] == PLAIN) & (gap["world_size"] == 1)]
    for device, g in gap.groupby("device"):
        small = g.loc[g["batch_size"].idxmin()]
        share = 100 * (1 - 1 / small["gap"])
        out.append(f"Input pipeline ({device}): the resident pipeline trains {_fmt(small['gap'])} as fast as the "
                   f"tutorial's at batch {int(small['batch_size'])} ({threads_phrase(small['threads'])}), so about "
                   f"{share:.0f}% of the tutorial's training time there goes to its input pipeline, not the "
                   f"model; {_fmt(g['gap'].min())}-{_fmt(g['gap'].max())} across the batch sizes.")
    scaling = a.thread_scaling
    scaling = scaling[(scaling["mode"] == "train") & (scaling["threads"] > 1) & (scaling["variant"] == PLAIN)
                      & (scaling["world_size"] == 1)]
    scaling = scaling.dropna(subset=["speedup"])  # no 1-thread Case to compare with
    for pipeline, g in scaling.groupby("pipeline"):
        top = g["threads"].max()
        g = g[g["threads"] == top]
        rows = a.ok[(a.ok["device"] == "cpu") & (a.ok["pipeline"] == pipeline) & (a.ok["mode"] == "train")]
        out.append(f"Threads ({pipeline} pipeline): {int(top)} threads give {g['speedup'].min():.2f}x-"
                   f"{g['speedup'].max():.2f}x of 1 thread (parallel efficiency "
                   f"{100 * g['efficiency'].min():.0f}-{100 * g['efficiency'].max():.0f}%){_contended(rows)}.")
    out.extend(_compute_findings(a.achieved_gflops))
    synthetic = "synthetic" in set(a.frame.get("dataset", pd.Series(dtype=str)).dropna())
    out.extend(answer.accuracy_findings(a.accuracy, synthetic))
    return out


def _compute_findings(gf: pd.DataFrame) -> list[str]:
    """Per device and precision, the fastest training Case's GFLOP/s against the matmul ceiling of
    that precision, or why there is none to compare with."""
    out = []
    for (device, precision), g in gf[gf["mode"] == "train"].groupby(["device", "ceiling_precision"]):
        top = g.loc[g["gflops"].idxmax()]
        where = f"batch {int(top['batch_size'])}, {top['pipeline']} pipeline{_step(top['variant'])}"
        if pd.isna(top["pct_of_ceiling"]):
            share = (f"against an unknown {precision} matmul ceiling ({top['ceiling_missing']}), so its share "
                     f"of this device's rate is not given ({where})")
        else:
            ceiling = top["ceiling_gflops"]
            rate = f"{ceiling:,.0f}" if ceiling >= 100 else f"{ceiling:.3g}"
            share = (f"{top['pct_of_ceiling']:.0f}% of this device's measured {precision} matmul ceiling "
                     f"({rate} GFLOP/s; {where})")
            if top["pct_of_ceiling"] > 100:  # e.g. bf16 on a CPU without bf16 units: a slow fallback matmul
                share += (f"; above 100%: the {precision} matrix multiply is slower here than the model's own "
                          f"kernels, so it bounds nothing")
        out.append(f"Compute ({device}): the fastest {precision} training Case does {top['gflops']:.1f} GFLOP/s, "
                   f"{share}.")
    return out


def _variant_findings(a: Analysis) -> list[str]:
    out = []
    gain = a.variant_gain
    for (device, pipeline, variant), g in gain[gain["mode"] == "train"].groupby(["device", "pipeline", "variant"]):
        small = g.loc[g["batch_size"].idxmin()]
        word = "faster" if small["low"] > 1 else ("slower" if small["high"] < 1 else "the same within the noise")
        out.append(f"Step variant {variant} ({device}, {pipeline} pipeline): {_fmt(small['gain'])} the eager step's "
                   f"training speed at batch {int(small['batch_size'])} ({word}); {_fmt(g['gain'].min())}-"
                   f"{_fmt(g['gain'].max())} across the batch sizes."
                   + ("" if pd.isna(small.get("compile_s", np.nan)) else _pays_off(small)))
    usage = a.gpu_usage
    usage = usage[usage["mode"] == "train"].dropna(subset=["gpu_energy_j_per_epoch"])
    for device, g in usage.groupby("device"):
        top = g.loc[g["images_per_s"].idxmax()]
        out.append(f"Energy ({device}): the fastest training Case draws {top['gpu_power_w']:.0f} W at "
                   f"{top['gpu_util_pct']:.0f}% utilisation, {top['gpu_energy_j_per_epoch']:.0f} J per epoch "
                   f"(GPU board only, from NVML).")
    return out


def _pays_off(row) -> str:
    """When a compiled step repays its compilation, in steps of its batch size."""
    spent = f" Compiling took {row['compile_s']:.1f} s"
    if pd.isna(row["break_even_steps"]):
        return spent + ", and it never pays for itself: the compiled step is no faster."
    return spent + f", repaid after {row['break_even_steps']:,.0f} steps at batch {int(row['batch_size'])}."


def _scaling_findings(a: Analysis) -> list[str]:
    """Whether more processes (or GPUs) help this model: the best multi-process Case against the best
    single process at the same global batch (else at the same per-rank batch), and the all-reduce
    share as the reason."""
    sc = a.data_parallel[a.data_parallel["world_size"] > 1]
    ok = a.ok
    one = ok[(ok["mode"] == "train") & (ok["world_size"] == 1)]
    out = []
    for device, g in sc.groupby("device"):
        units = "GPUs" if str(device).startswith("cuda") else "processes"
        same_global = g.dropna(subset=["vs_best_one_process"])
        if not same_global.empty:
            top = same_global.loc[same_global["vs_best_one_process"].idxmax()]
            ratio, at = top["vs_best_one_process"], f"the same global batch {int(top['global_batch_size'])}"
        else:  # no single-process Case at the global batch: compare at the same per-rank batch
            g = g.assign(vs=[r["images_per_s"] / one[(one["device"] == device) & (one["pipeline"] == r["pipeline"])
                                                    & (one["batch_size"] == r["batch_size"])]["images_per_s"].max()
                             for _, r in g.iterrows()]).dropna(subset=["vs"])
            if g.empty:
                continue
            top = g.loc[g["vs"].idxmax()]
            ratio, at = top["vs"], (f"the same per-rank batch {int(top['batch_size'])} (no single process ran "
                                    f"at the global batch {int(top['global_batch_size'])})")
        threads = "" if pd.isna(top["threads"]) else f" x {threads_phrase(top['threads'])}"
        share = "" if pd.isna(top["allreduce_pct"]) else (
            f"; the gradient all-reduce is in flight for {top['allreduce_pct']:.0f}% of the timed step time")
        out.append(f"Data parallelism ({device}): at best, {int(top['world_size'])} {units}{threads} train "
                   f"{_fmt(ratio)} as fast as the best single process at {at} ({top['pipeline']} pipeline; "
                   f"weak-scaling efficiency {100 * top['weak_efficiency']:.0f}%){share}, so more {units} "
                   + ("help this model here." if ratio > 1.05 else "do not help this model here."))
    return out
