"""The verdict's caveats: what its figures rest on and how sure they are. Pure: an Analysis in, sentences out."""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.analysis.tables import Analysis
from bench.measuring.stats import SPREAD_WARN_PCT
from bench.schema import JOB


def caveats(a: Analysis, skipped_devices: dict[str, str]) -> list[str]:
    """What the verdict's figures rest on and could mislead a reader: the data, skipped devices, uncertain or
    contended Cases, a sampled job, the allocator state, the Cases that did not finish."""
    caveats = []
    if set(a.ok.get("dataset", pd.Series(dtype=str)).unique()) & {"synthetic"}:
        caveats.append("Measured on SYNTHETIC data: throughput is representative of CIFAR-10, accuracy is not.")
    for device, why in skipped_devices.items():
        caveats.append(f"Device {device} was skipped: {why}.")
    if not a.noisy.empty:
        caveats.append(f"{len(a.noisy)} of {len(a.ok)} Cases varied by more than {SPREAD_WARN_PCT:.0f}% (IQR over "
                       f"median) between timed windows; their figures are less certain.")
    caveats += _precision_caveats(a.ok)
    evaluated = a.ok.get("eval_images", pd.Series(dtype=float)).dropna()
    if not evaluated.empty:
        caveats.append(f"Test accuracy was measured on the first {int(evaluated.min()):,} test images only "
                       f"(--eval-images, or --quick): a rough figure, not the tutorial's pass over the whole test set.")
    untimed = a.ok[a.ok["mode"].isin(["train", "infer"]) & a.ok["images_per_s"].isna()]
    if not untimed.empty:
        r = untimed.iloc[0]
        caveats.append(f"{len(untimed)} Case(s) ran too few steps to time any step after warm-up, so they have no "
                       f"throughput: e.g. {r['key']} ran {int(r['steps'])} step(s) with {int(r['warmup_steps'])} "
                       f"of warm-up; give --max-steps (or --epochs) room for steps beyond --warmup-steps, "
                       f"and a batch size well under the data set's size.")
    sampled = a.jobs.get("job_s_low", pd.Series(dtype=float)).notna()
    sittings = pd.to_numeric(a.jobs.get("job_sittings", pd.Series(np.nan, index=a.jobs.index)), errors="coerce")
    if (sampled & sittings.ge(2)).any():
        caveats.append("The tutorial's job was projected from samples of its steps in several sittings (processes) "
                       "spread over the sweep: its interval is where 95% of runs of the job land on this machine as "
                       "it was during the sweep, from how far the sittings' projections land apart (Student's t with "
                       "few sittings, and a short sitting varies more than a whole run: it errs wide). A machine "
                       "whose pace moves over longer than the sweep can still put a run outside it (docs/method.md: How it "
                       "measures).")
    if (sampled & ~sittings.ge(2)).any():
        caveats.append("The tutorial's job was projected from a sample of its steps: its 95% interval covers how those "
                       "steps were sampled, not how runs of the script differ from one another, which can be wider "
                       "where its DataLoader workers share the cores with its training threads (docs/method.md: How it "
                       "measures).")
    caveats += _allocator_caveat(a.frame)
    for status, group in a.unfinished.groupby("status"):
        caveats.append(f"{len(group)} Case(s) ended as {status}: e.g. {group.iloc[0]['key']}: {group.iloc[0]['error']}")
    return caveats


def _allocator_caveat(frame: pd.DataFrame) -> list[str]:
    """The allocator states the Cases ran in, the job's named apart: it runs in the state the tutorial's own script
    finds itself in (bench/sweep/plan.py JOB_MALLOC), the other Cases in the ones the sweep asked for."""
    if "malloc_state" not in frame:
        return []
    job = frame["mode"].eq(JOB) if "mode" in frame else pd.Series(False, index=frame.index)
    states = sorted(frame.loc[~job, "malloc_state"].dropna().unique())
    job_states = sorted(frame.loc[job, "malloc_state"].dropna().unique())
    if not states and not job_states:
        return []
    text = "Allocator state, pinned in every Case before it allocated (bench/measuring/allocator.py): "
    parts = ["; ".join(states)] if states else []
    if job_states:
        parts.append("the tutorial's job in " + "; ".join(job_states) + ", the state its own script's glibc reaches "
                     "by itself (docs/method.md: How it measures)")
    return [text + "; ".join(parts) + "."]


def _precision_caveats(ok: pd.DataFrame) -> list[str]:
    """Cases the budget stopped before their figure was as sure as asked, and Cases measured beside busy
    neighbours, whose figures (and the thread, crossover and ceiling findings drawn from them) the
    neighbours decided as much as the model."""
    out = []
    timed = ok[ok["images_per_s"].notna()]
    if "target_precision_pct" in timed and "images_per_s_ci_pct" in timed:
        aimed = timed[timed["target_precision_pct"].notna()]
        short = aimed[aimed["stopped_by"] != "precise"]
        if len(short):
            widest = short["images_per_s_ci_pct"].max()
            budget = int(short["stopped_by"].isin(["max_seconds", "max_steps"]).sum())
            out.append(f"{len(short)} of {len(aimed)} Cases ended before their median was known within "
                       f"+-{aimed['target_precision_pct'].iloc[0]:g}% (95%): {budget} hit the budget, "
                       f"{len(short) - budget} ran out of epochs; their intervals are wider, up to "
                       + (f"+-{widest:.0f}%" if pd.notna(widest) else "unknown (under 6 windows)")
                       + " (see 'How sure each figure is').")
    out += _process_caveat(timed)
    if "contended" in timed and timed["contended"].fillna(False).astype(bool).any():
        busy = timed[timed["contended"].fillna(False).astype(bool)]
        steal = busy["steal_pct"].max() if "steal_pct" in busy else float("nan")
        out.append(f"{len(busy)} of {len(timed)} Cases were measured while other processes or the hypervisor used "
                   f"the CPU (other processes up to {busy['other_cpu_cores'].max():.1f} cores on average"
                   + (f", steal up to {steal:.0f}%" if pd.notna(steal) else "") + "): their figures, and the thread-scaling, "
                   f"crossover and ceiling-share findings drawn from them, reflect the neighbours as much as the "
                   f"model; run again on a quiet machine (e.g. {busy.iloc[0]['key']}).")
    return out


def _process_caveat(timed: pd.DataFrame) -> list[str]:
    """What the intervals cover: one process's windows, or (with --repeats) the processes of each Case."""
    if timed.empty:
        return []
    processes = timed["processes"].fillna(1) if "processes" in timed else pd.Series(1, index=timed.index)
    if (processes <= 1).all():
        return ["Each figure was measured in one process: its interval says how its own timed windows varied, "
                "not how far the same Case run again in a new process lands, which can be further on a shared "
                "machine (--repeats 3 measures that, and each interval then covers it)."]
    repeated = timed[processes > 1]
    lo, hi = int(processes[processes > 1].min()), int(processes.max())
    spread = repeated["between_process_pct"]
    spread_text = (f"+-{spread.min():.1f}%" if spread.min() == spread.max()
                   else f"+-{spread.min():.1f}% to +-{spread.max():.1f}%")
    return [f"{len(repeated)} Cases were measured in {lo if lo == hi else f'{lo}-{hi}'} processes each (--repeats): their "
            f"figures are the processes' geometric mean, and their intervals cover how far processes of one Case "
            f"landed from each other ({spread_text}, one standard deviation, pooled over those Cases of a device), "
            f"not only one process's windows."]
