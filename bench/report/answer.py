"""The answer in the asker's terms, for the verdict's first lines: the tutorial's own job per device (time
and accuracy), the fastest configuration to the target accuracy, what it costs, and accuracy findings
only where the Cases compared trained alike. Pure: analysis tables in, sentences out.
"""
from __future__ import annotations

import pandas as pd

from bench.analysis.tables import LEARNT_PCT, counted_in_every_job


def duration(seconds: float) -> str:
    """42 s, 1 min 52 s, 2 h 05 min."""
    s = round(seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _pct(fraction: float) -> str:
    """A share as a percentage with two significant figures at least: 37%, 4.2%, 0.061%."""
    pct = 100 * fraction
    return f"{pct:.0f}%" if pct >= 10 else f"{pct:.2g}%"


def _where(row) -> str:
    machine = row.get("machine") or ""
    return f"{row['device']}" + (f" ({machine})" if machine else "")


def threads_phrase(t) -> str:
    """"1 thread", "4 threads", or "default threads" where the Case left torch's default."""
    return "default threads" if pd.isna(t) else f"{int(t)} thread{'s' if t != 1 else ''}"


def _threads(row) -> str:
    """", 4 threads" for a CPU Case, from the threads it used; nothing for a GPU's."""
    t = row.get("threads_used")
    return "" if pd.isna(t) or not str(row["device"]).startswith("cpu") else f", {threads_phrase(t)}"


JOB_WHAT = ("The tutorial's job (its script as published: imports and datasets, 2 epochs at batch 4 through its "
            "DataLoader, then its two test passes)")
# how runs from before the job counted its datasets' check (then its imports) said what they had measured
IMPORTS_JOB_WHAT = ("The tutorial's job (its script as published: imports, 2 epochs at batch 4 through its DataLoader, "
                    "then its two test passes)")
OLD_JOB_WHAT = "The tutorial's job (2 epochs at batch 4 through its DataLoader, then the test pass)"  # runs before 23


def job_headline(jobs: pd.DataFrame) -> str:
    """'The tutorial's job (...) takes about 2 min 05 s on cpu, 2 threads (95% sampling interval 1 min 58 s -
    2 min 12 s, projected from 3.1% of it measured ...); on cuda:0 ...'."""
    parts = []
    for _, j in jobs.iterrows():
        where = f"on {_where(j)}{_threads(j)}"
        if j["job_projected"]:
            sittings = j.get("job_sittings")
            several = pd.notna(sittings) and sittings >= 2
            interval = (f"{'95% of runs within' if several else '95% sampling interval'} "
                        f"{duration(j['job_s_low'])} - {duration(j['job_s_high'])}, "
                        if pd.notna(j.get("job_s_low")) and pd.notna(j.get("job_s_high")) else "")
            source = (f"{int(sittings)} sittings spread over the sweep, {_pct(j['job_fraction'])} of the job measured in all"
                      if several else f"the {_pct(j['job_fraction'])} of it measured")
            parts.append(f"takes about {duration(j['job_s'])} {where} ({interval}projected from {source}; "
                         f"{j['test_accuracy_pct']:.1f}% test accuracy after that part, the 2-epoch accuracy was not "
                         f"measured)")
        else:
            parts.append(f"takes {duration(j['job_s'])} {where}, measured whole, and reaches "
                         f"{j['test_accuracy_pct']:.1f}% test accuracy")
    what = (JOB_WHAT if counted_in_every_job(jobs, "job_dataset_s") else
            IMPORTS_JOB_WHAT if counted_in_every_job(jobs, "job_import_s") else OLD_JOB_WHAT)
    return f"{what} " + "; ".join(parts) + "."


def job_findings(jobs: pd.DataFrame) -> list[str]:
    """Where each device's job time goes, and how the devices compare on it."""
    out = []
    for _, j in jobs.iterrows():
        word = "projected" if j["job_projected"] else "measured"
        within = [f"{duration(j[c])} {what}" for c, what in (("job_import_s", "of it importing torch"),
                                                               ("job_dataset_s", "building its two datasets"))
                  if pd.notna(j.get(c))]
        imports = f" ({', '.join(within)})" if within else ""
        out.append(f"Where the job's time goes on {_where(j)} ({word}): start-up {duration(j['job_startup_s'])}"
                   f"{imports}, waiting for data {duration(j['job_data_s'])}, training compute "
                   f"{duration(j['job_compute_s'])}, test passes {duration(j['job_eval_s'])}.")
    if len(jobs) > 1:
        fast = jobs.loc[jobs["job_s"].idxmin()]
        slow = jobs.loc[jobs["job_s"].idxmax()]
        out.append(f"On the tutorial's job {_where(fast)} is {slow['job_s'] / fast['job_s']:.2f}x as fast as "
                   f"{_where(slow)}.")
    return out


def target_findings(to_target: pd.DataFrame, ok: pd.DataFrame) -> list[str]:
    """The fastest configuration measured to the target accuracy on each device; on synthetic data, said to show
    that training works, not what CIFAR-10 reaches."""
    out = []
    targets = ok["target_accuracy_pct"].dropna().unique() if "target_accuracy_pct" in ok else []
    synthetic = "dataset" in ok and (ok["dataset"] == "synthetic").all()
    for target in targets:
        reached = to_target[to_target["target_accuracy_pct"] == target]
        parts = []
        for device in sorted(ok["device"].unique()):
            r = reached[reached["device"] == device]
            if r.empty:
                parts.append(f"{device}: no Case reached it within its budget")
                continue
            r = r.iloc[0]
            what = ("the tutorial's job" if r["mode"] == "job" else
                    f"{r['pipeline']} pipeline, batch {int(r['batch_size'])}"
                    + ("" if pd.isna(r["threads"]) else f", {int(r['threads'])} threads")
                    + ("" if r["variant"] == "eager" else f", {r['variant']} step"))
            parts.append(f"{device} in {duration(r['time_to_target_s'])} of training ({what})")
        out.append(f"Fastest to {target:g}% test accuracy measured" + (" (on synthetic data: it shows training "
                   "works, not what CIFAR-10 reaches)" if synthetic else "") + ": " + "; ".join(parts) + ".")
    return out


def _usd(x: float) -> str:
    return f"${x:.2f}" if x >= 1 else f"${x:.4f}" if x >= 0.0001 else f"${x:.2e}"


def cost_findings(costs: pd.DataFrame) -> list[str]:
    """Cost of the job, of an epoch and to the target per device, and which device is cheaper."""
    if costs.empty:
        return []
    prices = ", ".join(f"{_where(c)} ${c['price_usd_per_hour']:.2f}/h" for _, c in costs.iterrows())
    out = []
    for _, c in costs.iterrows():
        items = []
        if pd.notna(c["job_usd"]):
            items.append(f"the tutorial's job {_usd(c['job_usd'])}" + (" (projected)" if c["job_projected"] else ""))
        if pd.notna(c["epoch_usd"]):
            items.append(f"an epoch at its fastest configuration {_usd(c['epoch_usd'])}")
        if pd.notna(c["target_usd"]):
            items.append(f"reaching the target accuracy {_usd(c['target_usd'])}")
        if items:
            out.append(f"Cost on {_where(c)}: " + ", ".join(items) + ".")
    for column, what in (("job_usd", "the tutorial's job"), ("epoch_usd", "an epoch at the fastest configuration")):
        known = costs.dropna(subset=[column])
        if len(known) > 1:
            cheap, dear = known.loc[known[column].idxmin()], known.loc[known[column].idxmax()]
            faster = cheap[column.replace("usd", "s")] <= dear[column.replace("usd", "s")]
            out.append(f"Cheaper for {what}: {_where(cheap)} ({_usd(cheap[column])} against {_usd(dear[column])}), "
                       + ("and faster too." if faster else f"though {_where(dear)} is faster.")
                       + f" Prices: {prices}.")
            break
    return out


def accuracy_findings(accuracy: pd.DataFrame, synthetic: bool) -> list[str]:
    """Accuracy by batch size only among Cases that ran the same full epochs; below twice chance, that the
    budget was too short to learn; on synthetic data, what its accuracy shows."""
    acc = accuracy.dropna(subset=["test_accuracy_pct"])
    if acc.empty:
        return []
    label = (" On synthetic data accuracy shows that training works, not what CIFAR-10 reaches." if synthetic else "")
    if acc["test_accuracy_pct"].max() < LEARNT_PCT:
        return [f"Accuracy: no training Case learnt (best {acc['test_accuracy_pct'].max():.1f}%, below "
                f"{LEARNT_PCT:.0f}%, twice chance): the budget was too short to learn, so accuracy is not compared "
                f"(run with --max-seconds 0 for whole epochs).{label}"]
    full = acc[acc["comparable"]]
    if full["batch_size"].nunique() > 1 and full["epochs_completed"].astype(float).round(3).nunique() == 1:
        by_batch = full.groupby("batch_size")["test_accuracy_pct"].max()
        return [f"Accuracy after {full['epochs_completed'].iloc[0]:g} full epoch(s) by batch size: "
                + ", ".join(f"batch {int(b)} {v:.1f}%" for b, v in by_batch.items())
                + f" (the same epochs, so fewer steps at larger batches at the same learning rate).{label}"]
    return [f"Accuracy is not compared across batch sizes: the Cases stopped at their time budget after different "
            f"numbers of epochs (a larger batch is not less accurate for that); run with --max-seconds 0 to train "
            f"them all for the same epochs.{label}"]
