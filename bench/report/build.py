"""report.md, report.html (self-contained), the PNG charts and results.csv, from one run or several."""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, fields, replace
from pathlib import Path

from matplotlib.figure import Figure
import pandas as pd

from bench.analysis import tables
from bench.analysis.cost import with_prices
from bench.analysis.roofline import with_ceilings
from bench.report import charts, findings
from bench.report.summary import precision_table
from bench.store.run_folder import Run, RunFolder
from cnn.files import write_whole


def machine_label(env: dict) -> str:
    listed = env.get("gpus", [])  # None: the ceiling worker could not read them
    gpus = "GPUs unknown" if listed is None else ", ".join(g["name"] for g in listed) or "no GPU"
    isa = f"{env['cpu_isa']}, " if env.get("cpu_isa") else ""  # two CPUs of one name can differ in it
    return (f"{env.get('hostname', '?')} ({env.get('cpu_model', '?')}, {isa}{env.get('cpu_logical_cores', '?')} cores, "
            f"{gpus})")


def run_labels(runs: list[Run]) -> list[str]:
    """Each run's label in a report of several: its machine, and where two runs share a machine (the natural
    before/after) its run id too, and where that repeats (a copied folder) its path. "" for a single run."""
    if len(runs) < 2:
        return [""] * len(runs)
    labels = [machine_label(r.environment) for r in runs]
    for extra in (lambda r: str(r.environment.get("run_id") or r.path.name), lambda r: str(r.path)):
        repeated = {label for label in labels if labels.count(label) > 1}
        labels = [f"{label} · {extra(r)}" if label in repeated else label for label, r in zip(labels, runs)]
    return labels


def combined_frame(runs: list[Run]) -> pd.DataFrame:
    """All runs' rows, each with its run's ceilings; with several runs each row is labelled with its run
    (run_labels), so no two runs' Cases are ever taken for one."""
    frames = [with_prices(with_ceilings(r.frame, r.environment), r.environment).assign(machine=label)
              for r, label in zip(runs, run_labels(runs))]
    return pd.concat(frames, ignore_index=True)


def _ceilings(runs: list[Run]) -> pd.DataFrame:
    """Each run's measured matmul rates by device and precision, and why any is unknown."""
    rows = []
    for run, label in zip(runs, run_labels(runs)):
        c = run.environment.get("ceilings") or {}
        rates, sizes, missing = (c.get(k) or {} for k in ("matmul_gflops", "matmul_n", "matmul_missing"))
        for device in sorted(set(rates) | set(missing)):
            for precision in sorted(set(rates.get(device, {})) | set(missing.get(device, {}))):
                n = sizes.get(device, {}).get(precision)
                rows.append({"machine": label, "device": device, "precision": precision,
                             "matmul_gflops": rates.get(device, {}).get(precision, float("nan")),
                             "n": "-" if n is None else str(n),
                             "unknown_because": missing.get(device, {}).get(precision, "-")})
    return pd.DataFrame(rows, columns=["machine", "device", "precision", "matmul_gflops", "n", "unknown_because"])


def number(v: float) -> str:
    """A figure as a person reads it: whole from 100 up (thousands separated), else 3 significant figures."""
    if pd.isna(v):
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _md_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_(none)_"

    def cell(v) -> str:
        return number(v) if isinstance(v, float) else str(v)

    head = "| " + " | ".join(frame.columns) + " |\n| " + " | ".join("---" for _ in frame.columns) + " |\n"
    return head + "".join("| " + " | ".join(cell(v) for v in row) + " |\n" for row in frame.itertuples(index=False))


def informative(frame: pd.DataFrame) -> pd.DataFrame:
    """The table without the columns that never change down it (the first, naming each row, stays): a reader
    learns nothing from a column of 1s, and the run's settings are in its own table."""
    if len(frame) < 2:
        return frame
    keep = [c for i, c in enumerate(frame.columns)
            if i == 0 or frame[c].astype(str).nunique(dropna=False) > 1]
    return frame[keep]


def _drop_blank(frame: pd.DataFrame) -> pd.DataFrame:
    if "machine" in frame and (frame["machine"] == "").all():
        frame = frame.drop(columns="machine")
    return frame


SUMMARY = "summary.png"
CHARTS = {SUMMARY, "job.png", "cost.png", "throughput_train.png", "speedup.png", "thread_scaling.png", "epoch_time.png",
          "accuracy.png", "throughput_infer.png", "latency.png", "scaling.png", "width.png"}


def _accuracy_figure(accuracy: pd.DataFrame, figs: list, left_out: list[str]) -> None:
    """The accuracy chart, only of Cases that ran the same full epochs and learnt; else why there is none."""
    shown = accuracy[accuracy["comparable"] & accuracy["learnt"]].dropna(subset=["test_accuracy_pct"])
    if shown["batch_size"].nunique() > 1 and shown["epochs_completed"].astype(float).round(3).nunique() == 1:
        figs.append(("accuracy.png", "Accuracy after the same epochs, and time to target",
                     charts.accuracy_vs_batch(shown)))
    elif not accuracy.empty:
        left_out.append("accuracy.png: no two batch sizes both trained the same full epochs and learnt (above "
                        f"{tables.LEARNT_PCT:.0f}%), so there is no accuracy to compare (see the accuracy table)")


def _figures(a: tables.Analysis, train_images: int) -> tuple[list[tuple[str, str, Figure]], list[str]]:
    """(the charts there is something to show in, why each other one is left out)."""
    best, trains = a.best, not a.best.empty and (a.best["mode"] == "train").any()
    figs, left_out = [], []
    if trains:  # the title's answer first: it sits under the headline, on the report's first screen
        figs.append((SUMMARY, "Training images/s by batch size, per device and input pipeline",
                     charts.summary(best, a.input_bound)))
    if not a.jobs.empty:
        figs.append(("job.png", "The tutorial's job per device", charts.job_time(a.jobs)))
    if not a.costs.empty:
        figs.append(("cost.png", "Cost per device", charts.cost(a.costs)))
    if trains:
        figs.append(("throughput_train.png", "Training throughput by batch size", charts.throughput_vs_batch(best)))
    if not a.speedups.empty:
        figs.append(("speedup.png", "GPU speed-up over the best CPU", charts.speedup_vs_batch(a.speedups)))
    if a.thread_scaling["threads"].nunique() > 1:
        figs.append(("thread_scaling.png", "CPU thread scaling", charts.thread_scaling(a.thread_scaling)))
    if trains:
        figs.append(("epoch_time.png", "Time per epoch", charts.epoch_time(best, train_images)))
    _accuracy_figure(a.accuracy, figs, left_out)
    if not a.inference.empty:
        figs.append(("throughput_infer.png", "Inference throughput by batch size",
                     charts.throughput_vs_batch(best, mode="infer")))
        figs.append(("latency.png", "Inference latency", charts.inference_latency(a.inference)))
    if not a.data_parallel.empty:
        figs.append(("scaling.png", "Data-parallel scaling", charts.data_parallel_scaling(a.data_parallel)))
    if a.frame["width"].nunique() > 1:
        figs.append(("width.png", "Throughput by model width", charts.throughput_vs_width(best)))
    return figs, left_out


def _sections(a: tables.Analysis, ceilings: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    sections = [("The tutorial's job per device (seconds; projected where job_projected, with its 95% interval "
                 "job_s_low - job_s_high: where 95% of runs land, from its job_sittings processes where it has several; time predictions, here and for an epoch or a cost, come from total images "
                 "over total time, stalls included; throughput tables compare medians over timed windows)", a.jobs),
                ("Time to the target accuracy: the fastest Case per device", a.time_to_target),
                ("Cost per device (USD, at each run's --price)", a.costs),
                ("Best throughput per configuration (over thread counts)", a.best),
                ("GPU speed-up over the best CPU", a.speedups),
                ("Crossover batch size", a.crossover),
                ("CPU thread scaling", a.thread_scaling),
                ("Input pipeline gap (resident / tutorial)", a.pipeline_gap),
                ("Input bound: the tutorial's DataLoader alone (images/s, 95% interval) against the CPU's best "
                 "training through it; bound = the most any GPU could speed the tutorial pipeline up on this host; "
                 "share_of_bound = a GPU's training rate over the DataLoader's", a.input_bound),
                ("Accuracy and time to target", a.accuracy),
                ("Inference", a.inference),
                ("Step variants against the eager step", a.variant_gain),
                ("Data-parallel scaling (DDP): global images/s, efficiency, all-reduce share", a.data_parallel),
                ("Matmul ceilings measured per device and precision (GFLOP/s)", ceilings),
                ("Achieved GFLOP/s and share of the matmul ceiling in each Case's own precision",
                 a.achieved_gflops.drop(columns="ceiling_missing")),
                ("GPU utilisation, power and energy (NVML)", a.gpu_usage),
                ("Time outside the timed windows, medians: start-up (process, data, model, CUDA context, graph "
                 "capture; outside the --max-seconds budget, paid once by a whole job) and warm-up (first steps, "
                 "cuDNN autotuning; inside the budget, on every device alike)", a.outside_windows),
                ("How sure each figure is: median images/s, its 95% interval (+-% of the median) over the windows "
                 "timed; stop 'precise' when the interval reached the target, 'budget' when --max-seconds came "
                 "first; others_cores: other processes' CPU use while it ran (contended above 0.5); processes: "
                 "how many processes measured it (--repeats): then the interval is over processes, with the spread "
                 "between processes (between_%) pooled over the run's repeated Cases on the same device",
                 precision_table(a.frame)),
                ("Warnings recorded with each Case", a.warnings),
                ("Cases that did not finish", a.unfinished)]
    return [(title, _drop_blank(table)) for title, table in sections]


@dataclass
class Report:
    """What build_report wrote, and the verdict it opens with."""

    markdown: Path
    html: Path
    verdict: findings.Verdict
    charts: dict[str, Path]  # file name -> path, in the report's order
    captions: dict[str, str]

    def _repr_markdown_(self) -> str:  # Jupyter shows the verdict
        lines = [f"**{self.verdict.headline}**", ""] + [f"- {f}" for f in self.verdict.findings]
        return "\n".join(lines + [""] + [f"- *{c}*" for c in self.verdict.caveats])


CHART_DPI = 110


def _save_charts(charts: list[tuple[Path, Figure]]) -> dict[str, bytes]:
    """Writes each chart as a PNG (never through a link); returns each one's bytes by file name."""
    written = {}
    for path, fig in charts:
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=CHART_DPI)
        write_whole(path, png.getvalue())
        written[path.name] = png.getvalue()
    return written


def build_report(run_dirs: list[Path | Run], out_dir: Path) -> Report:
    """Writes the report files into out_dir, from run folders (or runs already read)."""
    runs = [r if isinstance(r, Run) else RunFolder(r).load() for r in run_dirs]
    df = combined_frame(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped = {d: why for r in runs for d, why in r.environment.get("skipped_devices", {}).items()}
    analysed = tables.analyse(df)
    verdict = findings.verdict(analysed, skipped)
    train_images = int(df["train_images"].dropna().max()) if df["train_images"].notna().any() else 50000
    as_text = {f.name: charts.plain_text(getattr(analysed, f.name)) for f in fields(analysed)}
    figures, left_out = _figures(replace(analysed, **as_text), train_images)
    images = {}
    for stale in CHARTS - {name for name, _, _ in figures}:  # a chart an earlier report drew and this one leaves out
        (out_dir / stale).unlink(missing_ok=True)
    for name, png in _save_charts([(out_dir / name, fig) for name, _, fig in figures]).items():
        images[name] = base64.b64encode(png).decode()
    RunFolder(out_dir).write_csv([r for run in runs for r in run.results])
    datasets = ", ".join(sorted(df["dataset"].dropna().unique()))
    title = "Does a GPU help the CIFAR-10 tutorial CNN?"
    # a section with nothing in it is left out, and a column that never changes down its table
    sections = [(heading, informative(table)) for heading, table in _sections(analysed, _ceilings(runs))
                if not table.empty]
    md = _markdown(title, verdict, runs, datasets, figures, sections, left_out)
    write_whole(out_dir / "report.md", md)
    write_whole(out_dir / "report.html", _html(title, verdict, runs, datasets, figures, images, sections, left_out))
    return Report(out_dir / "report.md", out_dir / "report.html", verdict,
                  {name: out_dir / name for name, _, _ in figures}, {name: caption for name, caption, _ in figures})


def _machines(runs: list[Run]) -> pd.DataFrame:
    return pd.DataFrame([{
        "run": r.environment.get("run_id", r.path.name), "machine": machine_label(r.environment),
        "torch": r.environment.get("torch"), "CUDA": r.environment.get("cuda_runtime") or "-",
        "float32 matmul": r.environment.get("float32_matmul_precision") or "-",
        "data": r.environment.get("dataset"), "when": r.environment.get("timestamp"),
        "USD/h": ", ".join(f"{d}={p:g}" for d, p in (r.environment.get("price_usd_per_hour") or {}).items()) or "-"}
        for r in runs])


def _markdown(title, verdict, runs, datasets, figures, sections, left_out) -> str:
    lines = [f"# {title}", "", f"**{verdict.headline}**", ""]
    lines += [f"![{caption}]({name})\n" for name, caption, _ in figures if name == SUMMARY]
    lines += [f"- {f}" for f in verdict.findings]
    if verdict.caveats:
        lines += ["", "Caveats:", ""] + [f"- {c}" for c in verdict.caveats]
    lines += ["", f"Data: **{datasets}**. Every figure below was measured on it.", "", "## Machines", "",
              _md_table(_machines(runs)), "## Charts", ""]
    for name, caption, _ in figures:
        if name != SUMMARY:
            lines += [f"![{caption}]({name})", ""]
    lines += [f"- Left out: {why}" for why in left_out] + ([""] if left_out else [])
    for heading, table in sections:
        lines += [f"## {heading}", "", _md_table(table), ""]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:auto;padding:1rem;line-height:1.45;color:#222}
img{max-width:100%;height:auto;border:1px solid #ddd;margin:.5rem 0}
table{border-collapse:collapse;font-size:.85rem;display:block;overflow-x:auto;margin-bottom:1rem}
td,th{border:1px solid #ccc;padding:.2rem .4rem;text-align:right}th{background:#f3f3f3}
.verdict{font-size:1.15rem;background:#eef6ee;padding:.6rem 1rem;border-left:4px solid #3a3}
.caveats{background:#fff7e6;padding:.3rem 1rem;border-left:4px solid #e90}"""


def _html_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p><em>(none)</em></p>"
    return frame.to_html(index=False, na_rep="-", float_format=number, border=0)


def _html(title, verdict, runs, datasets, figures, images, sections, left_out) -> str:
    e = html.escape
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>{e(title)}</title><style>{CSS}</style></head><body>", f"<h1>{e(title)}</h1>",
             f"<p class='verdict' id='verdict'><strong>{e(verdict.headline)}</strong></p>"]
    parts += [f"<figure id='summary'><img alt='{e(caption)}' src='data:image/png;base64,{images[name]}'></figure>"
              for name, caption, _ in figures if name == SUMMARY]
    parts.append("<ul>" + "".join(f"<li>{e(f)}</li>" for f in verdict.findings) + "</ul>")
    if verdict.caveats:
        parts.append("<div class='caveats'><p>Caveats:</p><ul>"
                     + "".join(f"<li>{e(c)}</li>" for c in verdict.caveats) + "</ul></div>")
    parts += [f"<p>Data: <strong>{e(datasets)}</strong>. Every figure below was measured on it.</p>",
              "<h2>Machines</h2>", _html_table(_machines(runs)), "<h2>Charts</h2>"]
    for name, caption, _ in figures:
        if name != SUMMARY:
            parts.append(f"<figure><img alt='{e(caption)}' src='data:image/png;base64,{images[name]}'>"
                         f"<figcaption>{e(caption)}</figcaption></figure>")
    if left_out:
        parts.append("<ul>" + "".join(f"<li>Left out: {e(why)}</li>" for why in left_out) + "</ul>")
    for heading, table in sections:
        parts += [f"<h2>{e(heading)}</h2>", _html_table(table)]
    parts.append("</body></html>")
    return "\n".join(parts)
