"""Hostile and careless input, one test per family: data files that declare more than they hold, archives
that unpack more than CIFAR-10, run folders in use or resumed with other options, malformed results files,
options that cannot mean anything. Each is refused with one line and exit 2, before harm is done."""
from __future__ import annotations

import errno
import io
import json
import os
import pickle
import resource
import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bench import cli
from bench.store.run_folder import RunFolder
from cnn import cache, cifar_files
from cnn.archive import MAX_EXTRACT_BYTES, extract_archive
from conftest import run_bench

TINY = ["--dataset", "synthetic", "--devices", "cpu", "--batch-sizes", "8", "--threads", "1", "--pipelines",
        "resident", "--modes", "train", "--max-steps", "8", "--warmup-steps", "2", "--window", "0.02", "--no-job"]


def _one_line(proc, *needles: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr
    assert err.startswith("bench: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


class _Declares:
    """Unpickles as numpy's _reconstruct(ndarray, shape, uint8): a few bytes that declare any array."""

    def __init__(self, shape):
        self.shape = shape

    def __reduce__(self):
        return np.ndarray.__reduce__(np.empty(0))[0], (np.ndarray, self.shape, b"B")


# --------------------------------------------------------------------------- data files


def test_a_tiny_pickle_declaring_200000_images_is_refused_before_anything_is_allocated(mini: Path, tmp_path: Path):
    batch = mini / cifar_files.PY_FOLDER / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": _Declares((200000, 3072)), "labels": [0] * 200000}, protocol=4))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(cifar_files.DataError, match="data_batch_1: .*larger than a CIFAR-10 batch"):
        cifar_files.read_python_folder(mini / cifar_files.PY_FOLDER)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB: under 50 MB
    (mini / cifar_files.ARCHIVE).unlink()  # the folder is the only layout left, so nothing can stand in for it
    shutil.rmtree(mini / cifar_files.BIN_FOLDER)
    proc = run_bench("run", *TINY[2:], "--dataset", "cifar10", "--data-dir", str(mini), "--no-verify",
                     "--out", str(tmp_path / "run"))
    _one_line(proc, "data_batch_1", "larger than a CIFAR-10 batch")
    caches = [p for p in mini.rglob("*.npy")]
    assert sum(p.stat().st_size for p in caches) < 50 * 2**20 and not (tmp_path / "run" / "results.jsonl").exists()


@pytest.mark.parametrize("labels, why", [
    ([0.5] * 10, "'labels' must be a list of integers 0..9"),
    ([10**30] * 10, "'labels' must be a list of integers 0..9"),  # too large for int64: no OverflowError
    ([True] * 10, "'labels' must be a list of integers 0..9"),
])
def test_labels_that_are_not_small_integers_are_refused(tmp_path: Path, labels, why):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({"data": np.zeros((10, 3072), np.uint8), "labels": labels}, protocol=4))
    with pytest.raises(cifar_files.DataError, match=why):
        cifar_files._read_py_batch(path)


def test_a_sparse_binary_batch_declaring_gigabytes_is_refused_before_it_is_read(tmp_path: Path):
    path = tmp_path / "data_batch_1.bin"
    with open(path, "wb") as f:
        f.truncate(cifar_files.BIN_RECORD * 4_000_000)  # 12 GB of holes
    with pytest.raises(cifar_files.DataError, match="a CIFAR-10 batch holds at most 30730000"):
        cifar_files._read_bin_batch(path)


class _Zeros(io.RawIOBase):
    def __init__(self, n: int):
        self.left = n

    def readinto(self, b) -> int:
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def test_an_archive_that_unpacks_more_than_cifar10_is_refused_before_extracting(tmp_path: Path):
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(f"{cifar_files.PY_FOLDER}/data_batch_1")
        info.size = MAX_EXTRACT_BYTES + 1
        tar.addfile(info, _Zeros(info.size))
    assert archive.stat().st_size < 4 * 2**20  # a small download
    with pytest.raises(cifar_files.DataError, match="bytes unpacked; CIFAR-10's archive has 9"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out" / cifar_files.PY_FOLDER / "data_batch_1").exists()


def test_a_pickle_memo_bomb_is_refused_without_allocating_its_memo(tmp_path: Path):
    path = tmp_path / "data_batch_1"
    # PROTO 2, EMPTY_DICT, LONG_BINPUT 2**28, STOP: C's unpickler sizes its memo table by the index (4 GB here)
    path.write_bytes(b"\x80\x02}r" + (2**28).to_bytes(4, "little") + b".")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(cifar_files.DataError, match="data_batch_1: not a CIFAR-10 batch"):
        cifar_files._read_py_batch(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB


def test_a_planted_verified_manifest_cannot_skip_the_md5_check(mini: Path):
    from cnn import data
    unverified = data.prepare_cifar10(mini, verify=False, download=False)
    manifest_path = unverified.cache_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["verified"] is False and cache.read_manifest(unverified.cache_dir) == manifest
    manifest_path.write_text(json.dumps({**manifest, "verified": True}))  # planted: everything else consistent
    assert cache.read_manifest(unverified.cache_dir) is None
    with pytest.raises(cifar_files.DataError, match="is not the official"):
        data.prepare_cifar10(mini, verify=True, download=False)
    # a cache made under another user's key (copied from elsewhere) is not trusted either
    data.prepare_cifar10(mini, verify=False, download=False)
    key = Path(os.environ["CNN_CACHE_DIR"]) / "cache.key"
    key.rename(mini / "key.bak")
    try:
        assert cache.read_manifest(unverified.cache_dir) is None
    finally:
        (mini / "key.bak").rename(key)
    assert cache.read_manifest(unverified.cache_dir) is not None
    key.chmod(0o644)  # a key others can read is no secret: nothing it marked is trusted
    try:
        assert cache.read_manifest(unverified.cache_dir) is None
    finally:
        key.chmod(0o600)


def test_a_partial_folder_is_never_preferred_to_a_good_archive(mini: Path):
    from cnn import data
    folder = mini / cifar_files.PY_FOLDER
    expected = cifar_files.read_python_folder(folder, "cifar10-unverified")
    (folder / "data_batch_3").unlink()  # what an interrupted extraction leaves
    prepared = data.prepare_cifar10(mini, verify=False, download=False)
    assert prepared.source.endswith(cifar_files.ARCHIVE)
    assert "data_batch_3" in prepared.warning and f"used {mini / cifar_files.ARCHIVE} instead" in prepared.warning
    got = cache.load_arrays(prepared.cache_dir)
    np.testing.assert_array_equal(got.train_x, expected.train_x)
    assert not (folder / "data_batch_3").exists()  # the user's folder is left as it was


def test_an_extraction_that_fails_leaves_no_folder_under_the_official_name(mini: Path, tmp_path: Path,
                                                                         monkeypatch):
    dest = tmp_path / "dest"
    dest.mkdir()
    truncated = dest / cifar_files.ARCHIVE
    good = (mini / cifar_files.ARCHIVE).read_bytes()
    truncated.write_bytes(good[: len(good) * 2 // 3])
    with pytest.raises(cifar_files.DataError, match="not a readable tar.gz archive"):
        extract_archive(truncated, dest)
    assert sorted(p.name for p in dest.iterdir()) == [cifar_files.ARCHIVE]
    # the disk fills up after two members were written
    written, makefile = [], tarfile.TarFile.makefile

    def filling(self, member, path):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        written.append(path)
        return makefile(self, member, path)

    monkeypatch.setattr(tarfile.TarFile, "makefile", filling)
    with pytest.raises(cifar_files.DataError, match=f"{dest}: cannot extract {cifar_files.ARCHIVE} into it "
                                                    "\\(No space left on device\\)"):
        extract_archive(mini / cifar_files.ARCHIVE, dest)
    assert len(written) == 2 and sorted(p.name for p in dest.iterdir()) == [cifar_files.ARCHIVE]


# --------------------------------------------------------------------------- run folders


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "good"
    proc = run_bench("run", *TINY, "--out", str(out), "--no-report")
    assert proc.returncode == 0, proc.stderr
    return out


def test_a_resume_with_other_options_is_refused_and_leaves_the_environment_as_it_was(good_run, tmp_path: Path):
    out = tmp_path / "run"
    shutil.copytree(good_run, out)
    environment = (out / "environment.json").read_bytes()
    proc = run_bench("run", *TINY, "--lr", "0.01", "--batch-sizes", "8,16", "--out", str(out), "--resume")
    _one_line(proc, "--resume: ", "was run with other options: ", "batch_sizes [8] then, [8, 16] now",
              "lr 0.001 then, 0.01 now")
    assert (out / "environment.json").read_bytes() == environment
    proc = run_bench("run", *TINY, "--out", str(out), "--resume", "--no-report")  # the same options: resumes
    assert proc.returncode == 0 and "0 Cases" in proc.stdout, proc.stderr
    assert json.loads((out / "environment.json").read_text())["resumes"]  # its own record, appended


def test_an_empty_out_is_refused():
    _one_line(run_bench("run", *TINY, "--out", ""), "--out: an empty name is not a folder")


# --------------------------------------------------------------------------- results files


@pytest.mark.parametrize("line, why", [
    (b"null", "line 2: a JSON NoneType, not an object"),
    (b"[1, 2]", "line 2: a JSON list, not an object"),
    (b'"text"', "line 2: a JSON str, not an object"),
    (b"\xff\xfe", "line 2: not UTF-8 text"),
    (b'{"images_per_s": NaN}', "line 2: NaN is not a number JSON allows"),
    (b'{"schema_version": 99}', "line 2: schema version 99, and this bench reads 1 to 2"),
    (b'{"images_per_s": "fast"}', "line 2: 'images_per_s' is 'fast', not a number above 0"),
    (b'{"images_per_s": -5}', "line 2: 'images_per_s' is -5, not a number above 0"),
    (b'{"a": x}', "line 2: not JSON (Expecting value)"),
    (b'{"images_per_s": 0.0, "windows_s": [0.5], "windows_images": [0]}', "line 2: 'images_per_s' is 0.0"),
    (b'{"windows_s": [0.0], "windows_images": [0]}', "line 2: 'windows_s' and 'windows_images' are [0.0] and [0], "
                                                     "not two lists of the same length of numbers above 0"),
    (b'{"windows_s": [0.5, 0.5], "windows_images": [8]}', "not two lists of the same length"),
    (b'{"images_per_s": 1e308, "images_per_s_p25": 1e308, "images_per_s_p75": 2000}',
     "'images_per_s' 1e+308 is not between its quartiles 1e+308 and 2000"),
])
def test_a_malformed_results_line_is_one_line_and_exit_2_from_report_compare_and_export(good_run, tmp_path, line,
                                                                                          why, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    good = (good_run / "results.jsonl").read_bytes().splitlines()
    (bad / "results.jsonl").write_bytes(b"\n".join([good[0], line, *good[1:]]) + b"\n")
    for argv in (["report", str(bad)], ["compare", str(good_run), str(bad)], ["export", str(bad)]):
        assert cli.main(argv) == 2
        _one_line(SimpleNamespace(returncode=2, stdout="", stderr=capsys.readouterr().err), why,
                  "(expected one Result as a JSON object per line")
    if line == b"null":  # and as a user runs it, in a process of its own
        _one_line(run_bench("report", str(bad)), why)


@pytest.mark.parametrize("text, why", [("{not json", "cannot be read as JSON"),
                                       ("[1, 2]", "holds a JSON list, not the object bench run writes")])
def test_an_environment_that_is_not_a_json_object_is_one_line_and_exit_2(good_run, tmp_path, capsys, text, why):
    bad = tmp_path / "bad"
    shutil.copytree(good_run, bad)
    (bad / "environment.json").write_text(text)
    for argv in (["report", str(bad)], ["compare", str(good_run), str(bad)], ["export", str(bad)]):
        assert cli.main(argv) == 2
        _one_line(SimpleNamespace(returncode=2, stdout="", stderr=capsys.readouterr().err), "environment.json", why)


def test_a_line_cut_short_by_a_killed_run_is_skipped_and_nan_is_never_written(good_run, tmp_path: Path):
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "results.jsonl").write_bytes((good_run / "results.jsonl").read_bytes() + b'{"schema_version": 1, "ke')
    assert len(RunFolder(cut).results()) == len(RunFolder(good_run).results())
    for line in (good_run / "results.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in results.jsonl"))
    from bench.result import Result

    result = RunFolder(good_run).results()[0]
    result.images_per_s = float("nan")
    assert json.loads(Result.to_json(result))["images_per_s"] is None


def test_a_case_measured_but_not_writable_is_printed_whole_and_stops_the_sweep(tmp_path: Path, capsys):
    """A full disk, from the kernel: results.jsonl is /dev/full, whose writes fail with ENOSPC."""
    from bench.running import runner
    from bench.running.progress import Display
    from bench.sweep import spec
    from bench.sweep.plan import plan_cases
    from cnn.data import prepare_synthetic

    out = tmp_path / "run"
    out.mkdir()
    (out / "results.jsonl").symlink_to("/dev/full")
    sweep = spec.spec_from_keywords({"batch_sizes": [8, 16], "threads": [1], "pipelines": ["resident"],
                                     "modes": ["train"], "max_steps": 6, "warmup_steps": 2, "window_s": 0.02,
                                     "devices": ["cpu"], "job": False}, n_cuda=0)
    cases = plan_cases(sweep, str(prepare_synthetic().cache_dir), "synthetic", "r")
    with pytest.raises(runner.RunError, match="results.jsonl' cannot be written \\(No space left on device\\); "
                                              "the sweep stops"):
        runner.run_cases(cases, out, Display(len(cases)))
    printed = capsys.readouterr().out.split("its Result line:\n")[1].splitlines()[0]
    measured = json.loads(printed)
    assert measured["key"] == cases[0].key and measured["status"] == "ok" and measured["images_per_s"] > 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes a read-only file anyway")
def test_a_resume_into_a_read_only_results_file_is_refused_before_measuring(good_run, tmp_path: Path):
    out = tmp_path / "run"
    shutil.copytree(good_run, out)
    (out / "results.jsonl").chmod(0o444)
    _one_line(run_bench("run", *TINY, "--out", str(out), "--resume"), "--resume: ", "cannot be written")


def test_a_temp_folder_too_long_for_a_unix_socket_is_one_line(tmp_path: Path):
    long = tmp_path / ("t" * (110 - len(str(tmp_path))))
    long.mkdir()
    proc = run_bench("run", *TINY, "--out", str(tmp_path / "run"), env={"TMPDIR": str(long)})
    _one_line(proc, "TMPDIR: ", "too long for the Unix socket", "e.g. TMPDIR=/tmp")
    assert not (tmp_path / "run" / "results.jsonl").exists()


def test_a_run_with_too_few_steps_to_time_reports_so(good_run, tmp_path: Path, capsys):
    """What `bench run --max-steps 2 --warmup-steps 2` writes: a Case with steps, no timed window."""
    out = tmp_path / "run"
    shutil.copytree(good_run, out)
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    record.update(steps=2, warmup_steps=2, max_steps=2, windows_s=[], windows_images=[], images_per_s=None,
                  images_per_s_p25=None, images_per_s_p75=None, images_per_s_spread_pct=None)
    (out / "results.jsonl").write_text(json.dumps(record) + "\n")
    assert cli.main(["report", str(out)]) == 0, capsys.readouterr().err
    report = (out / "report.md").read_text()
    assert "No training Case measured a throughput" in report
    assert "1 Case(s) ran too few steps to time any step after warm-up" in report and "ran 2 step(s)" in report


# --------------------------------------------------------------------------- options


def test_a_value_given_twice_is_one_point_of_the_sweep(tmp_path: Path):
    proc = run_bench("plan", *TINY[:2], "--devices", "cpu", "--batch-sizes", "8,8,16", "--threads", "1,1",
                     "--widths", "1,1.0", "--pipelines", "resident,resident", "--modes", "train", "--no-job")
    assert proc.returncode == 0, proc.stderr
    assert [line.strip() for line in proc.stdout.splitlines() if line.startswith("  train/")] == [
        "train/cpu/resident/b8/t1/w1/r0", "train/cpu/resident/b16/t1/w1/r0"]
    assert os.path.exists(tmp_path)


@pytest.mark.parametrize("option, value, why", [
    ("--batch-sizes", "1000000000000", "more than the 50000 images of the training set"),
    ("--batch-sizes", "60000", "(expected at most 50000)"),
    ("--repeats", "1000000000", "(expected at most 100)"),
    ("--seed", "100000000000000000000", "not a seed (expected an integer 0..4294967295)"),
    ("--seed", "-1", "not a seed"),
    ("--widths", "1e-9", "leaves the first convolution no channel"),
    ("--widths", "0.5,0.52", "'0.52' gives the same channels (3, 8) as '0.5'"),
    ("--widths", "1000", "(expected at most 64)"),
    ("--num-workers", "1000000000000", "DataLoader workers per logical core"),
    ("--world-sizes", "1000000000000", "logical cores, one per rank at least"),
    ("--warmup-steps", "100000000000", "(expected at most 100000)"),
    ("--max-steps", "100000000000", "(expected at most 10000000)"),
    ("--max-seconds", "1e9", "more than a day"),
    ("--time-limit", "1e12", "more than a day"),
    ("--window", "1e9", "more than an hour"),
    ("--epochs", "1000000", "(expected at most 1000)"),
    ("--latency-batches", "10000000000", "(expected at most 100000)"),
    ("--lr", "1e300", "(expected at most 10)"),
])
def test_a_number_beyond_what_its_option_means_is_refused(option, value, why, capsys):
    assert cli.main(["plan", "--dataset", "synthetic", "--devices", "cpu", option, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench: {option}: '") and why in err and err.count("\n") == 1, err
