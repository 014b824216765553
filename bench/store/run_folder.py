"""The one owner of a run folder (STYLE.md #18): it names, writes, locks and loads `results.jsonl`,
`environment.json` and `results.csv`, and upgrades what older versions wrote, in one place.
Nothing else opens those files by path.
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.result import SCHEMA_VERSION, Result, upgrade_environment, upgrade_record
from bench.schema import Case
from bench.store.checked import MAX_ENVIRONMENT_BYTES, MAX_RESUMES, FieldError, check_environment, check_record
from cnn.files import open_own, refuse_link, write_whole

RESULTS, ENVIRONMENT, CSV, LOCK = "results.jsonl", "environment.json", "results.csv", ".bench.lock"
OWN = (RESULTS, ENVIRONMENT, CSV, LOCK)  # a run folder's own files: no other output may take their place


class RunError(ValueError):
    """A run folder that cannot be read or written: missing, empty, malformed, unwritable, or in use."""


@dataclass
class Run:
    """A run folder read once: its environment, its Results, and the frame made from them."""

    path: Path
    environment: dict
    frame: pd.DataFrame
    results: list[Result] = field(default_factory=list)


class RunFolder:
    """A folder written by `bench run` (or being written)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS

    def has_results(self) -> bool:
        return self.results_path.is_file()

    def prepare(self, resume: bool) -> None:
        """Refuses a folder that cannot be written, or one holding results without resume (ValueError,
        one line naming the option)."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out: '{self.path}' is not a folder (expected a folder to write the run into)")
        if resume and not self.results_path.exists():
            raise ValueError(f"--resume: '{self.path}' holds no {RESULTS} to resume (expected a previous run's folder)")
        if not resume and self.results_path.exists():
            raise ValueError(f"--out: '{self.path}' already holds results (pass --resume, or choose another folder)")
        if resume and not os.access(self.results_path, os.W_OK):
            raise ValueError(f"--resume: '{self.results_path}' cannot be written (expected a results file this "
                             f"user can append to)")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for name in OWN:
                refuse_link(self.path / name)
            fd, probe = tempfile.mkstemp(dir=self.path, prefix=".write-test-")  # O_EXCL: never a planted file
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise ValueError(f"--out: '{self.path}' cannot be written ({e.strerror or e})") from None

    @contextmanager
    def locked(self):
        """Held for a whole sweep: a second `bench run` (or a resume) into the same folder is refused
        while the first is alive; the lock goes with the process, however it ends."""
        try:
            fd = open_own(self.path / LOCK, os.O_RDWR | os.O_CREAT)
        except OSError as e:
            raise ValueError(f"--out: '{self.path / LOCK}' cannot be used as this run's lock ({e.strerror or e})") \
                from None
        with os.fdopen(fd, "r+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "?"
                raise ValueError(f"--out: '{self.path}' is in use by another bench run (pid {holder}); "
                                 f"wait for it to end, or choose another folder") from None
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            yield

    def append(self, result: Result) -> None:
        """Appends one complete line and forces it to disk, so an interrupted sweep loses nothing
        finished; appends from several processes (ranks, nodes) never interleave."""
        try:
            # unbuffered: a failed write leaves nothing pending
            f = os.fdopen(open_own(self.results_path, os.O_RDWR | os.O_CREAT | os.O_APPEND), "a+b", buffering=0)
        except OSError as e:
            raise RunError(f"'{self.results_path}' cannot be written ({e.strerror or e}); the sweep stops, "
                           f"the Cases written before are kept") from None
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            end = f.seek(0, os.SEEK_END)
            try:
                line = memoryview((result.to_json() + "\n").encode("utf-8"))
                if end:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":  # a line cut short by a crash: start a fresh one
                        line = memoryview(b"\n" + bytes(line))
                while line:
                    line = line[f.write(line):]
                os.fsync(f.fileno())
            except OSError as e:  # a full disk: take back the part written, so the file stays whole lines
                with suppress(OSError):
                    f.truncate(end)
                raise RunError(f"'{self.results_path}' cannot be written ({e.strerror or e}); the sweep stops, "
                               f"the Cases written before are kept") from None

    def results(self) -> list[Result]:
        """The Results, the latest line winning for a key (a resumed Case replaces its failure). A last line
        cut short by a killed run is skipped (its Case runs again on resume); any other line that is not a
        Result is a RunError naming its line."""
        if not self.results_path.exists():
            return []
        try:
            lines = self.results_path.read_bytes().split(b"\n")
        except OSError as e:
            raise RunError(f"'{self.results_path}' cannot be read ({e.strerror or e})") from None
        latest: dict[str, Result] = {}
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                result = _result(line)
            except CutShort:
                continue  # a line a killed run left unfinished; its Case runs again on resume
            except ValueError as e:
                raise RunError(f"'{self.results_path}' line {number}: {e} (expected one Result as a JSON object "
                               f"per line, as bench run writes)") from None
            latest[result.case.key] = result
        return list(latest.values())

    def environment(self) -> dict:
        """environment.json, upgraded; {} when absent."""
        path = self.path / ENVIRONMENT
        if not path.exists():
            return {}
        try:
            if path.stat().st_size > MAX_ENVIRONMENT_BYTES:
                raise RunError(f"'{path}' is {path.stat().st_size / 2**20:.0f} MB, more than any bench run writes "
                               f"(expected at most {MAX_ENVIRONMENT_BYTES >> 20} MB)")
            environment = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            if isinstance(e, RunError):
                raise
            raise RunError(f"'{path}' cannot be read as JSON ({getattr(e, 'strerror', None) or e})") from None
        if not isinstance(environment, dict):
            raise RunError(f"'{path}' holds a JSON {type(environment).__name__}, not the object bench run writes")
        version = environment.get("schema_version", 1)
        if type(version) is not int or not 1 <= version <= SCHEMA_VERSION:
            raise RunError(f"'{path}' has schema version {version!r:.40}, and this bench reads 1 to {SCHEMA_VERSION} "
                           f"(a newer bench wrote it, or none did)")
        environment = upgrade_environment(environment)
        try:
            check_environment(environment)
        except FieldError as e:
            raise RunError(f"'{path}': {e} (expected the environment.json bench run writes)") from None
        return environment

    def write_environment(self, environment: dict) -> None:
        """Written once; a resume keeps the first record and appends its own under `resumes`."""
        path = self.path / ENVIRONMENT
        if path.exists():
            first = self.environment()
            resumes = first.setdefault("resumes", [])
            if len(resumes) >= MAX_RESUMES:
                raise RunError(f"'{path}' records {len(resumes)} resumes already, the most one run folder keeps "
                               f"(expected a new run folder)")
            resumes.append(environment)
            if environment.get("price_usd_per_hour"):  # the latest price is the one the report prices with
                first["price_usd_per_hour"] = environment["price_usd_per_hour"]
            environment = first
        else:
            environment = {"schema_version": SCHEMA_VERSION, **environment}
        _write_whole(path, json.dumps(environment, indent=2))

    def write_csv(self, results: list[Result] | None = None) -> Path:
        """results.csv: one row per Case; lists and dicts as JSON text, so it reads back with pandas alone."""
        frame = results_frame(self.results() if results is None else results)
        for column in frame.columns:
            if frame[column].map(lambda v: isinstance(v, (list, dict))).any():
                frame[column] = frame[column].map(json.dumps)
        _write_whole(self.path / CSV, frame.to_csv(index=False))
        return self.path / CSV

    def load(self) -> Run:
        """The Results as a frame, with the environment."""
        if not self.path.is_dir():
            raise RunError(f"'{self.path}' is not a folder (expected a folder written by bench run)")
        results = self.results()
        if not results:
            raise RunError(f"'{self.path}' holds no {RESULTS} with any Case (expected a folder written by bench run)")
        return Run(self.path, self.environment(), results_frame(results), results)


POSITIVE = ("images_per_s", "images_per_s_p25", "images_per_s_p75", "batch_size", "width", "images_per_s_mean",
            "images_per_s_ci_low", "images_per_s_ci_high", "job_s", "job_s_low", "job_s_high")
NUMBERS = ("wall_s", "train_s", "images_per_s_ci_pct", "images_per_s_spread_pct")
WINDOWS = ("windows_s", "windows_images")


def _number(value, positive: bool) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and (value > 0 if positive else value >= 0)


def _result(line: bytes) -> Result:
    """One line as a Result; ValueError saying what is wrong with it."""
    try:
        record = json.loads(line.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except json.JSONDecodeError as e:
        if e.pos >= len(e.doc.rstrip()) or e.msg.startswith("Unterminated string"):  # the text ran out
            raise CutShort from None
        raise ValueError(f"not JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    version = record.get("schema_version", 1)
    if type(version) is not int or not 1 <= version <= SCHEMA_VERSION:
        raise ValueError(f"schema version {version!r}, and this bench reads 1 to {SCHEMA_VERSION}")
    for names, positive, what in ((POSITIVE, True, "a number above 0"), (NUMBERS, False, "a number of 0 or more")):
        for name in names:
            value = record.get(name)
            if value is not None and not _number(value, positive):
                raise ValueError(f"'{name}' is {value!r:.60}, not {what}")
    windows = [record.get(name) or [] for name in WINDOWS]
    if any(not isinstance(w, list) or not all(_number(v, True) for v in w) for w in windows) \
            or len(windows[0]) != len(windows[1]):
        raise ValueError(f"'windows_s' and 'windows_images' are {windows[0]!r:.40} and {windows[1]!r:.40}, not two "
                         f"lists of the same length of numbers above 0 (a window of no images or time is none)")
    median, p25, p75 = (record.get(name) for name in POSITIVE[:3])
    if None not in (p25, median, p75) and not p25 <= median <= p75:
        raise ValueError(f"'images_per_s' {median!r} is not between its quartiles {p25!r} and {p75!r}")
    record = upgrade_record(record)
    check_record(record, (Case, Result))
    try:
        return Result.from_dict(record)
    except TypeError as e:
        raise ValueError(f"not a Result ({e})") from None


class CutShort(ValueError):
    """A line that ends before its JSON does: written by a run killed mid-line."""


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def results_frame(results: list[Result]) -> pd.DataFrame:
    """One tidy row per Case."""
    return pd.DataFrame([r.to_dict() for r in results])


def _write_whole(path: Path, text: str) -> None:
    """Writes a file whole or not at all (temporary file, flushed to disk, then renamed; never through a
    link): a full disk or a crash leaves the old one."""
    try:
        write_whole(path, text)
    except OSError as e:
        raise RunError(f"'{path}' cannot be written ({e.strerror or e})") from None
