"""The Python API: the same sweep and report as `python -m bench run` and `bench report`, for a notebook.

    import bench
    spec = bench.sweep_spec(batch_sizes=[4, 32, 128], quick=True, dataset="synthetic")
    results = bench.run_sweep(spec)             # a DataFrame, one row per Case
    rep = bench.make_report(results.attrs["run_dir"])
    rep.verdict.headline, rep.charts            # charts: {file name: path}

Options are checked by the spec stage (bench/sweep/spec.py) with the CLI's own converters, so an option
means the same in both and a bad value gives the same one-line message (as a ValueError).
"""
from __future__ import annotations

import os
import sys
import threading
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

import pandas as pd
import psutil

from bench.result import Result
from bench.schema import SweepSpec


def sweep_spec(**options) -> SweepSpec:
    """A SweepSpec from `bench run`'s options as keywords (batch_sizes=[4, 32], quick=True,
    download=False, ...), each checked as the CLI checks it; a bad one raises ValueError with the
    CLI's one-line message."""
    from bench.measuring.devices import cuda_device_count
    from bench.sweep.spec import spec_from_keywords

    return spec_from_keywords(options, cuda_device_count())


def new_run_dir(out: str | Path | None = None, reports_dir: str | Path | None = None) -> tuple[Path, str]:
    """(run folder, run id): `out`, or <reports_dir>/<date-time>, where reports_dir defaults to
    $BENCH_REPORTS_DIR, else ./reports."""
    if out is not None:
        if not str(out).strip():
            raise ValueError("--out: an empty name is not a folder (expected e.g. --out reports/my-run)")
        return Path(out), Path(out).name
    run_id = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(reports_dir or os.environ.get("BENCH_REPORTS_DIR", "reports")) / run_id, run_id


def run_sweep(spec: SweepSpec, out: str | Path | None = None, resume: bool = False,
              reports_dir: str | Path | None = None, display=None, warn=None) -> pd.DataFrame:
    """Runs every Case of the spec not already done, writing the run folder (`out`, or a new one under
    `reports_dir`) as `bench run` does.

    Returns the run's results (one row per Case); `.attrs["run_dir"]` is the folder. Raises
    ValueError for an unusable folder or data set.
    """
    run = sweep_run(spec, out, resume, reports_dir, display, warn)
    frame = run.frame
    frame.attrs["run_dir"] = str(run.path)
    return frame


def sweep_run(spec: SweepSpec, out: str | Path | None = None, resume: bool = False,
              reports_dir: str | Path | None = None, display=None, warn=None, csv: bool = True):
    """run_sweep's work; returns the run folder as read once at the end (store.run_folder.Run), its results.csv
    written unless `csv` is False (a report that follows writes it)."""
    from bench.store.run_folder import RunFolder

    warn = warn or (lambda text: print(f"bench: WARNING: {text}", file=sys.stderr, flush=True))
    run_dir, run_id = new_run_dir(out, reports_dir)
    folder = RunFolder(run_dir)
    folder.prepare(resume)
    with folder.locked():
        if resume:
            _check_resumable(folder, spec)
        return _sweep(spec, folder, run_id, resume, display, warn, csv)


def _check_resumable(folder, spec: SweepSpec) -> None:
    """A resume runs the Cases the folder was planned with: other options are refused, naming each."""
    from bench.sweep.spec import resume_differences

    recorded = folder.environment().get("spec")
    if not recorded or not {"devices", "batch_sizes", "modes", "pipelines"} <= set(recorded):
        raise ValueError(f"--resume: '{folder.path}' records no options to hold this resume's against (its "
                         f"environment.json is missing or has no 'spec' with them); expected a folder written by "
                         f"bench run, or run into a new folder")
    differ = resume_differences(recorded, spec)
    if differ:
        raise ValueError(f"--resume: '{folder.path}' was run with other options: {'; '.join(differ)} (expected the "
                         f"options of the run being resumed)")


def _sweep(spec: SweepSpec, folder, run_id: str, resume: bool, display, warn, csv: bool):
    """run_sweep's work, with the run folder prepared and locked."""
    from bench.running.forkserver import check_temp_dir
    from bench.running.progress import Display
    from bench.running.runner import run_cases
    from bench.store.run_folder import Run, results_frame
    from bench.sweep.plan import oversubscription_warnings, plan_cases

    check_temp_dir()
    prepared = prepare_data(spec)
    if prepared.warning:
        warn(prepared.warning)
    for device, why in spec.skipped_devices.items():
        warn(f"skipping device {device}: {why}; running the other devices")
    all_devices = replace(spec, devices=spec.devices + list(spec.skipped_devices))
    cases = plan_cases(all_devices, str(prepared.cache_dir), prepared.name, run_id)
    done = {r.case.key for r in folder.results() if r.status in ("ok", "skipped")} if resume else set()
    todo = [c for c in cases if c.device not in spec.skipped_devices and c.key not in done]
    normalising = _cache_normalised(prepared.cache_dir) if any(c.device == "cpu" for c in todo) else None
    for text in oversubscription_warnings(todo, psutil.cpu_count(logical=False) or 1):
        warn(f"{text} (recorded in those Cases' warnings)")
    env = _environment(spec, prepared, run_id, measure_ceilings=bool(todo), normalising=normalising, warn=warn)
    folder.write_environment(env)
    for case in cases:
        if case.device in spec.skipped_devices and case.key not in done:
            folder.append(Result(case=case, status="skipped", error=spec.skipped_devices[case.device]))
    print(f"bench: {len(todo)} Cases on {prepared.name} data ({prepared.source}) -> {folder.path}"
          + (f" ({len(done)} already done)" if done else ""), flush=True)
    display = display or Display(len(todo))
    try:
        run_cases(todo, folder.path, display)
    finally:
        display.close()
    results = folder.results()
    if csv:
        folder.write_csv(results)
    return Run(folder.path, folder.environment(), results_frame(results), results)


def _environment(spec: SweepSpec, prepared, run_id: str, measure_ceilings: bool, normalising, warn) -> dict:
    """The run's environment.json: the machine, the matmul ceilings (in a worker, after the normalised copy is
    made: before anything is measured), the data and the spec."""
    from bench.running import ceilings, environment

    env = environment.capture(query_cuda=False)  # no CUDA here: the ceiling worker reads the GPUs
    import bench.report.build  # noqa: F401  (the report's imports, a second, made while the fork server still imports)
    if normalising is not None:  # done before anything is measured
        normalising.join()
        if normalising.failure:
            warn(normalising.failure)
    if measure_ceilings:  # a resume with nothing left to run has nothing to hold against a ceiling
        env.update(ceilings.measure_in_worker(spec.devices, spec.widths, spec.amp))
    for device, reasons in env.get("ceilings", {}).get("matmul_missing", {}).items():
        for precision, reason in reasons.items():
            warn(f"the {precision} matmul ceiling of {device} was not measured ({reason}); the report says so")
    env.update(run_id=run_id, dataset=prepared.name, dataset_source=prepared.source,
               dataset_warning=prepared.warning, skipped_devices=spec.skipped_devices, spec=asdict(spec),
               price_usd_per_hour=spec.price)
    return env


class _Normalising(threading.Thread):
    """Writes the normalised images CPU Cases map instead of decoding each (cnn/normalised.py), once per data set,
    beside the set-up that follows (its numpy and torch work runs without the GIL: 1 s on a first run here)."""

    def __init__(self, cache_dir):
        super().__init__(name="bench-normalise", daemon=True)
        self.cache_dir, self.failure = cache_dir, None

    def run(self) -> None:
        from cnn import normalised

        try:
            normalised.write(self.cache_dir)
        except Exception as e:  # noqa: BLE001  (a full disk, a memory error: the Cases decode for themselves)
            why = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
            self.failure = (f"the normalised images could not be cached beside the data ({why}); each CPU Case "
                            f"decodes them itself, as before (slower to start, measured the same)")


def _cache_normalised(cache_dir) -> _Normalising:
    thread = _Normalising(cache_dir)
    thread.start()
    return thread


def prepare_data(spec: SweepSpec):
    """The spec's data set found, downloaded or generated, and cached (cnn.data.Prepared);
    ValueError with a one-line reason when it cannot be."""
    from cnn.data import DataError, prepare_dataset

    try:
        return prepare_dataset(spec.dataset, spec.data_dir, verify=spec.verify, download=spec.download)
    except DataError as e:
        raise ValueError(f"--data-dir: {e}") from None
    except OSError as e:  # a folder or file this user cannot read, found on the way to the data
        raise ValueError(f"--data-dir: '{e.filename or spec.data_dir}' cannot be read ({e.strerror or e}); expected "
                         f"a folder this user can read (and write, or a cache in $CNN_CACHE_DIR)") from None


def make_report(runs: str | Path | list[str | Path], out: str | Path | None = None):
    """Builds report.md, report.html and the charts (into `out`, by default the one run's folder) and
    returns the Report: its verdict, the file paths and {chart file name: path}."""
    from bench.report.build import build_report

    runs = [Path(runs)] if isinstance(runs, (str, Path)) else [Path(r) for r in runs]
    if out is None and len(runs) > 1:
        raise ValueError("report: out is needed with several run folders (e.g. out='reports/compare')")
    return build_report(runs, Path(out) if out is not None else runs[0])
