"""matplotlib figures from the analysis tables; one function per chart, each returns a Figure.

Titles state the finding, axes carry units. Nothing here computes a metric.
"""
from __future__ import annotations

import textwrap

import pandas as pd
from cycler import cycler
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from bench.analysis.tables import counted_in_every_job

SIZE = (7.0, 4.2)
LABEL_WIDTH = 36  # characters on a line of a legend or tick label
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22")  # matplotlib's tab10, reordered so the first two (often cpu and cuda) differ most
STYLES = ("-", "--", ":", "-.")


def _figure(ncols: int = 1, size: tuple[float, float] = SIZE):
    """(figure, axes) without pyplot: no backend is chosen or switched, so a notebook keeps its own. Every series
    gets a colour of its own, and past ten a line style too: no two lines of a chart look alike."""
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(1, ncols)
    for ax in axes if ncols > 1 else [axes]:
        ax.set_prop_cycle(cycler(linestyle=list(STYLES)) * cycler(color=list(COLOURS)))
    return fig, axes


def plain_text(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every text cell's `$` escaped: a device, machine or pipeline name that came from a file is
    drawn as written, never parsed as matplotlib mathtext (where `cpu$\\frac{x$` is an error)."""
    text = [c for c in frame.columns if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c])]
    if not text:
        return frame
    return frame.assign(**{c: frame[c].map(lambda v: v.replace("$", r"\$") if isinstance(v, str) else v)
                           for c in text})


def _series_label(row_or_key, fields: list[str]) -> str:
    parts = []
    for name, value in zip(fields, row_or_key if isinstance(row_or_key, tuple) else (row_or_key,)):
        if (name == "machine" and not value) or (name == "variant" and value == "eager"):
            continue
        if name == "threads":
            value = "default threads" if pd.isna(value) else f"{int(value)} thr"
        elif name == "width":
            if value == 1:
                continue
            value = f"width {value:g}"
        parts.append(str(value))
    # a long label (several runs: machine, run id, path) is wrapped, so the axes keep their room
    return "\n".join(textwrap.wrap(" ".join(parts), LABEL_WIDTH, break_on_hyphens=False))


def _batch_axis(ax, batches) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(set(int(b) for b in batches))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlabel("batch size (images)")


def _plain(v: float, _=None) -> str:
    return f"{v:,.0f}" if v >= 10 else f"{v:g}"


def _log_batch_axes(ax, batches, ylabel: str, legend_size: int = 8) -> None:
    """Log2 batch axis, log y axis with its label and units, grid and legend: the batch-size charts' frame."""
    _batch_axis(ax, batches)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(_plain))  # 6,000, not 6x10^3
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: _plain(v) if str(int(v))[0] in "25" else ""))
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=legend_size)


def throughput_vs_batch(best: pd.DataFrame, mode: str = "train") -> Figure:
    """Best images/s per device and pipeline against batch size, with the spread as error bars."""
    data = best[best["mode"] == mode]
    fig, ax = _figure()
    group_by = ["machine", "device", "pipeline", "variant", "width"]
    for key, g in data.groupby(group_by, dropna=False):
        g = g.sort_values("batch_size")
        err = [g["images_per_s"] - g["images_per_s_p25"], g["images_per_s_p75"] - g["images_per_s"]]
        ax.errorbar(g["batch_size"], g["images_per_s"], yerr=err, marker="o", capsize=3,
                    label=_series_label(key, group_by))
    _log_batch_axes(ax, data["batch_size"], f"{'training' if mode == 'train' else 'inference'} throughput (images/s)")
    if not data.empty:
        top = data.loc[data["images_per_s"].idxmax()]
        ax.set_title(f"{mode.capitalize()}: fastest is {top['device']} {top['pipeline']} at batch "
                     f"{int(top['batch_size'])} ({top['images_per_s']:,.0f} images/s)")
    return fig


def speedup_vs_batch(speedup: pd.DataFrame) -> Figure:
    """Accelerator over best CPU against batch size, with the noise band and the 1x line."""
    fig, ax = _figure()
    group_by = ["machine", "device", "pipeline", "variant", "width", "mode"]
    for key, g in speedup.groupby(group_by, dropna=False):
        g = g.sort_values("batch_size")
        line = ax.plot(g["batch_size"], g["speedup"], marker="o", label=_series_label(key, group_by))[0]
        ax.fill_between(g["batch_size"], g["low"], g["high"], color=line.get_color(), alpha=0.2)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="1x: as fast as the CPU")
    _log_batch_axes(ax, speedup["batch_size"], "speed-up over the best CPU configuration (x)")
    if not speedup.empty:
        best = speedup.loc[speedup["speedup"].idxmax()]
        ax.set_title(f"{_speedup_trend(speedup)}: up to {best['speedup']:.1f}x at batch {int(best['batch_size'])}")
    return fig


def _speedup_trend(speedup: pd.DataFrame) -> str:
    """What the data show: the speed-up rises with batch size on every series, falls on every one, or neither."""
    trends = set()
    for _, g in speedup.dropna(subset=["speedup"]).groupby(["machine", "device", "pipeline", "variant", "width",
                                                             "mode"], dropna=False):
        g = g.sort_values("batch_size")
        if len(g) >= 2:
            trends.add("up" if g["speedup"].iloc[-1] > g["speedup"].iloc[0] else "down")
    if trends == {"up"}:
        return "The GPU's lead grows with batch size"
    if trends == {"down"}:
        return "The GPU's lead shrinks as the batch grows"
    return "Speed-up over the best CPU by batch size"


def thread_scaling(scaling: pd.DataFrame) -> Figure:
    """Speed-up over 1 thread against thread count, per pipeline and batch size."""
    data = scaling[scaling["mode"] == "train"]
    fig, ax = _figure()
    group_by = ["machine", "pipeline", "variant", "batch_size"]
    for key, g in data.groupby(group_by, dropna=False):
        g = g.sort_values("threads")
        ax.plot(g["threads"], g["speedup"], marker="o", label=_series_label(key[:3], group_by[:3]) + f" b{key[3]}")
    if not data.empty:
        top = int(data["threads"].max())
        ax.plot([1, top], [1, top], color="black", linestyle="--", linewidth=1, label="perfect scaling")
        ax.xaxis.set_major_locator(FixedLocator(sorted(data["threads"].unique())))
        ax.set_title(f"{top} threads give {data[data['threads'] == top]['speedup'].min():.2f}x-"
                     f"{data[data['threads'] == top]['speedup'].max():.2f}x the training speed of 1")
    ax.set_xlabel("CPU threads")
    ax.set_ylabel("training speed-up over 1 thread (x)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return fig


def epoch_time(best: pd.DataFrame, train_images: int) -> Figure:
    """Seconds for one training epoch per device and pipeline: the train set over the best Case's total images over
    total time (stalls included, as a whole epoch pays them)."""
    from bench.analysis.cost import prediction_rate

    data = best[best["mode"] == "train"].assign(epoch_s=lambda d: train_images / prediction_rate(d))
    fig, ax = _figure()
    group_by = ["machine", "device", "pipeline", "variant", "width"]
    for key, g in data.groupby(group_by, dropna=False):
        g = g.sort_values("batch_size")
        ax.plot(g["batch_size"], g["epoch_s"], marker="o", label=_series_label(key, group_by))
    _log_batch_axes(ax, data["batch_size"], f"time per epoch of {train_images:,} images (s)")
    if not data.empty:
        fast = data.loc[data["epoch_s"].idxmin()]
        ax.set_title(f"An epoch takes {fast['epoch_s']:.1f} s at best ({fast['device']} {fast['pipeline']}, "
                     f"batch {int(fast['batch_size'])})")
    return fig


def accuracy_vs_batch(accuracy: pd.DataFrame) -> Figure:
    """Test accuracy reached against batch size, and the training time to the target accuracy beside it
    when some Case reached it."""
    targets = accuracy["time_to_target_s"].notna().any()
    fig, axes = _figure(ncols=2 if targets else 1, size=(9.5, 4.0) if targets else SIZE)
    left, right = (axes[0], axes[1]) if targets else (axes, None)
    group_by = ["machine", "device", "pipeline", "variant"]
    for key, g in accuracy.groupby(group_by, dropna=False):
        g = g.groupby("batch_size", as_index=False).agg(test_accuracy_pct=("test_accuracy_pct", "max"),
                                                          time_to_target_s=("time_to_target_s", "min"))
        label = _series_label(key, group_by)
        left.plot(g["batch_size"], g["test_accuracy_pct"], marker="o", label=label)
        if right is not None:
            right.plot(g["batch_size"], g["time_to_target_s"], marker="o", label=label)
    for ax in (left, right) if right is not None else (left,):
        _batch_axis(ax, accuracy["batch_size"])
        ax.grid(True, alpha=0.3)
    left.set_ylim(0, 100)  # the whole scale: a few points of noise must not read as a trend
    left.set_ylabel("test accuracy after the same epochs (%)")
    if right is not None:
        right.set_ylabel("training time to target accuracy (s)")
    left.legend(fontsize=7)
    best = accuracy.loc[accuracy["test_accuracy_pct"].idxmax()]
    fig.suptitle(f"Best accuracy {best['test_accuracy_pct']:.1f}% at batch {int(best['batch_size'])}"
                 + ("; a gap on the right means the target was not reached" if right is not None else ""))
    return fig


def inference_latency(inference: pd.DataFrame) -> Figure:
    """Per-batch inference latency p50 (markers) and p99 (bars' tops) against batch size."""
    fig, ax = _figure()
    group_by = ["machine", "device", "pipeline", "variant", "threads"]
    for key, g in inference.groupby(group_by, dropna=False):
        g = g.sort_values("batch_size")
        err = [[0] * len(g), g["latency_ms_p99"] - g["latency_ms_p50"]]
        ax.errorbar(g["batch_size"], g["latency_ms_p50"], yerr=err, marker="o", capsize=3,
                    label=_series_label(key, group_by))
    _log_batch_axes(ax, inference["batch_size"], "latency per batch (ms; p50, bar to p99)", legend_size=7)
    if not inference.empty:
        small = inference.loc[inference["batch_size"].idxmin()]
        ax.set_title(f"Inference at batch {int(small['batch_size'])} takes {small['latency_ms_p50']:.2f} ms "
                     f"(p50) on {small['device']}")
    return fig


def throughput_vs_width(best: pd.DataFrame) -> Figure:
    """Training images/s against model width, per device and batch size."""
    data = best[best["mode"] == "train"]
    fig, ax = _figure()
    group_by = ["machine", "device", "pipeline", "variant", "batch_size"]
    for key, g in data.groupby(group_by, dropna=False):
        g = g.sort_values("width")
        ax.plot(g["width"], g["images_per_s"], marker="o", label=_series_label(key[:4], group_by[:4]) + f" b{key[4]}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width (multiplier of the tutorial's conv channels)")
    ax.set_ylabel("training throughput (images/s)")
    ax.set_title("Wider models cost each device differently")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return fig


def data_parallel_scaling(scaling: pd.DataFrame) -> Figure:
    """Global training images/s (left) and weak-scaling efficiency (right) against world size."""
    fig, (left, right) = _figure(ncols=2, size=(9.5, 5.0))
    group_by = ["machine", "device", "pipeline", "variant", "threads", "batch_size"]
    for key, g in scaling.groupby(group_by, dropna=False):
        g = g.sort_values("world_size")
        label = _series_label(key[:5], group_by[:5]) + f" b{key[5]}/rank"
        line = left.plot(g["world_size"], g["images_per_s"], marker="o", label=label)[0]
        right.plot(g["world_size"], 100 * g["weak_efficiency"], marker="o", color=line.get_color(), label=label)
    sizes = sorted(scaling["world_size"].unique()) if not scaling.empty else [1]
    for ax in (left, right):
        ax.xaxis.set_major_locator(FixedLocator(sizes))
        ax.set_xlabel("world size (data-parallel ranks)")
        ax.grid(True, alpha=0.3)
    left.set_yscale("log")
    left.set_ylabel("global training throughput (images/s)")
    right.axhline(100, color="black", linestyle="--", linewidth=1, label="perfect scaling")
    right.set_ylabel("weak-scaling efficiency (%)")
    handles, labels = right.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=7)  # below: the lines stay visible
    multi = scaling[scaling["world_size"] > 1].dropna(subset=["vs_best_one_process"])
    if not multi.empty:
        top = multi.loc[multi["vs_best_one_process"].idxmax()]
        fig.suptitle(f"{int(top['world_size'])} ranks reach {top['vs_best_one_process']:.2f}x the best single process "
                     f"at global batch {int(top['global_batch_size'])}")
    return fig


def summary(best: pd.DataFrame, input_bound: pd.DataFrame) -> Figure:
    """The title's answer in one chart: training images/s against batch size, one line per device and pipeline (the
    best over threads, the eager step, width 1), plain linear axes with the batch sizes evenly spaced, the
    tutorial's own setting marked, and the tutorial DataLoader's own rate where it was measured (what no GPU can
    train the tutorial pipeline faster than, on that host)."""
    data = best[(best["mode"] == "train") & (best["variant"] == "eager") & (best["width"] == 1)
                & (best["world_size"] == 1)]
    fig, ax = _figure(size=(7.0, 3.6))
    batches = sorted(set(int(b) for b in data["batch_size"]) | set(int(b) for b in input_bound["batch_size"]))
    at = {b: i for i, b in enumerate(batches)}
    for key, g in data.groupby(["machine", "device", "pipeline"], dropna=False):  # colours from _figure's cycle
        g = g.sort_values("batch_size")
        ax.plot([at[int(b)] for b in g["batch_size"]], g["images_per_s"], marker="o",
                label=_series_label(key, ["machine", "device", "pipeline"]))
    for i, (machine, g) in enumerate(input_bound.drop_duplicates(["machine", "batch_size"]).groupby("machine")):
        g = g.sort_values("batch_size")
        label = "the tutorial's DataLoader alone: no GPU trains its pipeline faster" + (f" ({machine})" if machine
                                                                                          else "")
        ax.plot([at[int(b)] for b in g["batch_size"]], g["input_images_per_s"], color="black",
                linestyle=STYLES[(i + 1) % 4], marker="x", label=label)
    tutorial = data[(data["batch_size"] == 4) & (data["pipeline"] == "tutorial")]
    for _, row in tutorial.iterrows():
        ax.annotate("the tutorial as written", (at[4], row["images_per_s"]), xytext=(45, 32),
                    textcoords="offset points", fontsize=8, arrowprops={"arrowstyle": "->", "lw": 0.8})
    ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    ax.set_xlabel("batch size (images)")
    ax.set_ylabel("training throughput (images/s)")
    ax.yaxis.set_major_formatter(FuncFormatter(_plain))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Training images/s by batch size, per device and input pipeline")
    return fig


def job_time(jobs: pd.DataFrame) -> Figure:
    """The tutorial's job per device as stacked parts (start-up, data wait, compute, test passes); hatched
    where projected from a measured part."""
    fig, ax = _figure(size=(7.0, 1.6 + 0.6 * len(jobs)))
    parts = [("job_startup_s", "start-up"), ("job_data_s", "waiting for data"), ("job_compute_s", "training compute"),
             ("job_eval_s", "test passes")]
    labels = [_series_label((m, d), ["machine", "device"]) + (" (projected)" if p else "")
              for m, d, p in zip(jobs["machine"], jobs["device"], jobs["job_projected"])]
    left = pd.Series(0.0, index=jobs.index)
    for column, name in parts:
        ax.barh(labels, jobs[column], left=left, label=name,
                hatch=["//" if p else "" for p in jobs["job_projected"]])
        left = left + jobs[column]
    start = "imports and datasets" if counted_in_every_job(jobs, "job_dataset_s") else "imports"
    ax.set_xlabel(f"wall time of the tutorial's job: {start}, 2 epochs at batch 4, then its test passes (s)")
    ax.set_ylabel("device")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35 - 0.1 / len(jobs)), ncols=4)
    ax.grid(True, axis="x", alpha=0.3)
    fast = jobs.loc[jobs["job_s"].idxmin()]
    took = f"{fast['job_s']:.0f} s" if fast["job_s"] < 120 else f"{fast['job_s'] / 60:.1f} min"
    ax.set_title(f"The tutorial's job takes {'about ' * bool(fast['job_projected'])}{took} at best, on "
                 f"{fast['device']}")
    return fig


def cost(costs: pd.DataFrame) -> Figure:
    """USD per device for the tutorial's job, an epoch at the fastest configuration, and the target accuracy."""
    fig, ax = _figure()
    kinds = [("job_usd", "tutorial's job"), ("epoch_usd", "one epoch, fastest configuration"),
             ("target_usd", "to the target accuracy")]
    kinds = [(c, n) for c, n in kinds if costs[c].notna().any()]
    labels = [_series_label((m, d), ["machine", "device"]) for m, d in zip(costs["machine"], costs["device"])]
    width = 0.8 / max(len(kinds), 1)
    for i, (column, name) in enumerate(kinds):
        ax.bar([x + i * width for x in range(len(costs))], costs[column], width=width, label=name)
    ax.set_xticks([x + width * (len(kinds) - 1) / 2 for x in range(len(costs))], labels)
    ax.set_ylabel("cost (USD, at each run's --price)")  # linear: a bar's length is its cost
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title("What the time costs per device")
    return fig
