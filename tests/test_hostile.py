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


def test_a_case_measured_but_not_writable_is_printed_whole_and_stops_the_sweep(tmp_path: Path, capsys, monkeypatch):
    """A full disk, from the kernel: results.jsonl opens as /dev/full, whose writes fail with ENOSPC (a link to it
    would be refused: the harness never writes through a link)."""
    from bench.store import run_folder
    from bench.running import runner
    from bench.running.progress import Display
    from bench.sweep import spec
    from bench.sweep.plan import plan_cases
    from cnn.data import prepare_synthetic

    out = tmp_path / "run"
    out.mkdir()
    monkeypatch.setattr(run_folder, "open_own", lambda path, flags, mode=0o666: os.open("/dev/full", os.O_RDWR))
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


# --------------------------------------------------------------------------- run folders that travel (issue 26)


def _copy(good_run: Path, tmp_path: Path, name: str = "run") -> Path:
    out = tmp_path / name
    shutil.copytree(good_run, out)
    return out


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _refused(capsys, *argv: str, needles: tuple[str, ...] = ()) -> str:
    status, out, err = _cli(capsys, *argv)
    return _one_line(SimpleNamespace(returncode=status, stdout=out, stderr=err), *needles)


@pytest.mark.parametrize("own", ["results.jsonl", "environment.json", "results.csv"])
def test_an_export_onto_a_run_folders_own_file_is_refused_and_the_file_kept(good_run, tmp_path, capsys, own):
    run = _copy(good_run, tmp_path)
    RunFolder(run).write_csv()
    before = (run / own).read_bytes()
    _refused(capsys, "export", str(run), "--out", str(run / own), needles=(f"is a run folder's own {own}",))
    assert (run / own).read_bytes() == before
    assert cli.main(["report", str(run)]) == 0  # the folder still reads


def test_a_report_into_another_run_folder_is_refused(good_run, tmp_path, capsys):
    a, b = _copy(good_run, tmp_path, "a"), _copy(good_run, tmp_path, "b")
    RunFolder(b).write_csv()
    before = (b / "results.csv").read_bytes()
    _refused(capsys, "report", str(a), "--out", str(b), needles=("is a run folder of its own",))
    assert (b / "results.csv").read_bytes() == before


@pytest.mark.parametrize("planted", ["report.html", "report.md", "throughput_train.png", "pytest-benchmark.json",
                                     "results.csv"])
def test_a_link_planted_where_a_report_or_export_writes_is_refused_and_its_target_untouched(
        good_run, tmp_path, capsys, planted):
    run = _copy(good_run, tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    (run / planted).unlink(missing_ok=True)
    (run / planted).symlink_to(outside)
    command = ["export", str(run)] if planted == "pytest-benchmark.json" else ["report", str(run)]
    _refused(capsys, *command, needles=(f"{run / planted}' is a symbolic link", "never through a link"))
    assert outside.read_text() == "precious" and (run / planted).is_symlink()


@pytest.mark.parametrize("dangling", [False, True])
def test_a_lock_planted_as_a_link_is_refused_and_nothing_is_written_through_it(good_run, tmp_path, dangling):
    run = _copy(good_run, tmp_path)
    outside = tmp_path / "outside.txt"
    if not dangling:
        outside.write_text("precious")
    (run / ".bench.lock").unlink(missing_ok=True)
    (run / ".bench.lock").symlink_to(outside)
    _one_line(run_bench("run", *TINY, "--out", str(run), "--resume"), ".bench.lock' is a symbolic link")
    assert (outside.read_text() == "precious") if not dangling else not outside.exists()


@pytest.mark.parametrize("kind", ["folder", "read-only"])
def test_a_lock_that_is_a_folder_or_read_only_is_one_line(good_run, tmp_path, kind):
    if kind == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes a read-only file anyway")
    run = _copy(good_run, tmp_path)
    lock = run / ".bench.lock"
    lock.unlink(missing_ok=True)
    if kind == "folder":
        lock.mkdir()
    else:
        lock.write_text("")
        lock.chmod(0o444)
    _one_line(run_bench("run", *TINY, "--out", str(run), "--resume"), ".bench.lock")


def test_a_write_probe_planted_as_a_link_is_never_written_through(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    (out / ".write-test").symlink_to(outside)
    RunFolder(out).prepare(resume=False)
    assert outside.read_text() == "precious"


def test_links_planted_in_a_shared_cache_receive_nothing(tmp_path, monkeypatch):
    """The normalised images' and the cache key's temporaries, under the names a writer used to make them."""
    from cnn import normalised
    from cnn.data import prepare_synthetic

    monkeypatch.setenv("CNN_CACHE_DIR", str(tmp_path / "keys"))
    (tmp_path / "keys").mkdir()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious")
    (tmp_path / "keys" / f"cache.key.tmp-{os.getpid()}").symlink_to(outside)
    assert cache.cache_key() is not None and outside.read_bytes() == b"precious"
    prepared = prepare_synthetic(n_train=64, n_test=32)
    for split in normalised.SPLITS:
        name = normalised._path(prepared.cache_dir, split).name
        (prepared.cache_dir / f"{name}.tmp-{os.getpid()}").symlink_to(outside)
    normalised.write(prepared.cache_dir)
    assert outside.read_bytes() == b"precious"
    for split in normalised.SPLITS:
        assert normalised.load(prepared.cache_dir, split) is not None  # written, trusted, and not the link


def _environment(run: Path, **changes) -> None:
    path = run / "environment.json"
    env = json.loads(path.read_text())
    for name, value in changes.items():
        if value is _DROP:
            env.pop(name, None)
        else:
            env[name] = value
    path.write_text(json.dumps(env))


_DROP = object()


@pytest.mark.parametrize("spec", [_DROP, "text", [1, 2], {}, None])
def test_a_resume_of_a_folder_whose_options_cannot_be_compared_is_refused(good_run, tmp_path, spec):
    run = _copy(good_run, tmp_path)
    _environment(run, spec=spec)
    before = (run / "results.jsonl").read_bytes()
    proc = run_bench("run", *TINY, "--lr", "0.01", "--out", str(run), "--resume")
    _one_line(proc, "--resume: " if spec in (_DROP, {}, None) else "environment.json")
    assert (run / "results.jsonl").read_bytes() == before


def test_a_resume_of_a_folder_without_an_environment_is_refused(good_run, tmp_path, capsys):
    run = _copy(good_run, tmp_path)
    (run / "environment.json").unlink()
    _one_line(run_bench("run", *TINY, "--out", str(run), "--resume"), "--resume: ", "records no options")


@pytest.mark.parametrize("field, value, why", [
    ("spec", 7, "'spec' is 7, not an object"),
    ("resumes", "many", "'resumes' is 'many', not a list"),
    ("resumes", [{}] * 1001, "not a list of at most 1000 resumes"),
    ("skipped_devices", ["cuda:0"], "'skipped_devices' is ['cuda:0'], not an object"),
    ("skipped_devices", {"cuda:0": 5}, "'skipped_devices.cuda:0' is 5, not the reason as text"),
    ("price_usd_per_hour", "cheap", "'price_usd_per_hour' is 'cheap', not an object of hourly prices"),
    ("price_usd_per_hour", [1], "not an object of hourly prices"),
    ("price_usd_per_hour", {"*": "0.1"}, "'price_usd_per_hour.*' is '0.1', not a price"),
    ("ceilings", "fast", "'ceilings' is 'fast', not an object"),
    ("ceilings", {"matmul_gflops": {"cpu": {"fp32": "high"}}}, "'ceilings.matmul_gflops.cpu.fp32' is 'high'"),
    ("gpus", [1, 2], "'gpus' is [1, 2], not a list of GPUs each with a 'name'"),
    ("hostname", ["a"], "'hostname' is ['a'], not text"),
    ("cpu_logical_cores", "two", "'cpu_logical_cores' is 'two', not a count above 0"),
    ("schema_version", 99, "schema version 99, and this bench reads 1 to 2"),
])
def test_a_crafted_environment_is_one_line_from_every_command(good_run, tmp_path, capsys, field, value, why):
    run = _copy(good_run, tmp_path)
    _environment(run, **{field: value})
    for argv in (["report", str(run)], ["compare", str(good_run), str(run)], ["export", str(run)]):
        _refused(capsys, *argv, needles=("environment.json", why))
    if field == "resumes":
        _one_line(run_bench("run", *TINY, "--out", str(run), "--resume"), "environment.json", why)


def test_an_environment_too_large_to_be_bench_s_is_refused_before_it_is_parsed(good_run, tmp_path, capsys):
    run = _copy(good_run, tmp_path)
    with open(run / "environment.json", "ab") as f:
        f.truncate(17 << 20)  # sparse: no disk spent
    _refused(capsys, "report", str(run), needles=("more than any bench run writes",))


@pytest.mark.parametrize("changes, why", [
    ({"images_per_s_ci_low": -1.0}, "'images_per_s_ci_low' is -1.0, not a number above 0"),
    ({"images_per_s_ci_low": 0.0}, "'images_per_s_ci_low' is 0.0, not a number above 0"),
    ({"images_per_s_ci_low": 9e9, "images_per_s_ci_high": 1.0}, "is above 'images_per_s_ci_high'"),
    ({"images_per_s_ci_low": 1.0, "images_per_s_ci_high": 2.0}, "is not between 'images_per_s_ci_low'"),
    ({"images_per_s_ci_low": "low"}, "'images_per_s_ci_low' is 'low', not a number above 0"),
    ({"job_s_low": 5.0, "job_s": 1.0, "job_s_high": 9.0}, "'job_s' 1.0 is not between 'job_s_low'"),
    ({"steps": "many"}, "'steps' is 'many', not an integer"),
    ({"warnings": "careful"}, "'warnings' is 'careful', not a list"),
    ({"device": 5}, "'device' is 5, not text"),
    ({"class_accuracy_pct": {"cat": "high"}}, "'class_accuracy_pct'"),
])
def test_a_results_field_or_interval_no_bench_wrote_is_one_line_and_compare_never_decides_on_it(
        good_run, tmp_path, capsys, changes, why):
    run = _copy(good_run, tmp_path)
    lines = (run / "results.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    rate = record["images_per_s"]
    record.update({"images_per_s_ci_low": rate * 0.9, "images_per_s_ci_high": rate * 1.1, **changes})
    (run / "results.jsonl").write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    for argv in (["compare", str(good_run), str(run)], ["report", str(run)]):
        _refused(capsys, *argv, needles=("line 1: ", why))


def test_a_device_name_that_reads_as_mathtext_is_drawn_as_text(good_run, tmp_path, capsys):
    run = _copy(good_run, tmp_path)
    lines = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    for record in lines:
        record["device"] = "cpu$\\frac{x$"
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    status, _, err = _cli(capsys, "report", str(run))
    assert status == 0, err
    assert "cpu$\\frac{x$" in (run / "report.md").read_text()


def test_options_that_cannot_work_together_are_refused(capsys):
    _refused(capsys, "plan", "--dataset", "synthetic", "--devices", "cpu", "--compile-mode", "max-autotune",
             needles=("--compile-modes: max-autotune is a torch.compile mode and --compile is off",))
    _refused(capsys, "plan", "--dataset", "synthetic", "--devices", "cpu", "--window", "3600", "--max-seconds", "0.3",
             needles=("--window: 3600 s is longer than the whole --max-seconds 0.3",))
    status, _, err = _cli(capsys, "plan", "--dataset", "synthetic", "--devices", "cpu", "--compile", "on",
                          "--compile-mode", "max-autotune")
    assert status == 0, err


def test_a_resume_that_changes_the_price_is_the_price_the_report_uses(good_run, tmp_path):
    run = _copy(good_run, tmp_path)
    proc = run_bench("run", *TINY, "--out", str(run), "--resume", "--price", "7.5")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "environment.json").read_text())["price_usd_per_hour"] == {"*": 7.5}
    from bench.analysis.cost import with_prices

    loaded = RunFolder(run).load()
    assert set(with_prices(loaded.frame, loaded.environment)["price_usd_per_hour"]) == {7.5}


def test_a_device_named_twice_is_one_device(capsys):
    status, out, err = _cli(capsys, "plan", "--dataset", "synthetic", "--devices", "cpu,cpu", "--batch-sizes", "4,4",
                            "--threads", "1", "--pipelines", "resident", "--modes", "train", "--no-job",
                            "--no-input-bound")
    assert status == 0, err
    assert [line.strip() for line in out.splitlines() if line.startswith("  ")] == ["train/cpu/resident/b4/t1/w1/r0"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads an unreadable folder anyway")
def test_an_unreadable_data_folder_is_one_line(mini, tmp_path):
    (mini / cifar_files.PY_FOLDER).chmod(0)
    try:
        proc = run_bench("run", *TINY[2:], "--dataset", "cifar10", "--data-dir", str(mini), "--no-verify",
                         "--out", str(tmp_path / "run"))
    finally:
        (mini / cifar_files.PY_FOLDER).chmod(0o755)
    _one_line(proc, str(mini))


def test_a_data_folder_the_system_will_not_let_us_read_is_one_line(tmp_path, capsys, monkeypatch):
    """What the kernel says to a user without read permission (root, who runs these tests, is never refused)."""
    import cnn.data

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "data" / cifar_files.PY_FOLDER))

    monkeypatch.setattr(cnn.data, "prepare_dataset", refused)
    _refused(capsys, "run", *TINY[2:], "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
             "--out", str(tmp_path / "run"), needles=("--data-dir: ", "cifar-10-batches-py' cannot be read "
                                                      "(Permission denied)"))
    assert not (tmp_path / "run" / "results.jsonl").exists()


@pytest.mark.parametrize("content", [b"", b"not a gzip at all", "corrupt"])
def test_an_archive_that_is_not_a_whole_gzip_is_named_in_one_line(mini, tmp_path, content):
    archive = mini / cifar_files.ARCHIVE
    if content == "corrupt":
        data = bytearray(archive.read_bytes())
        data[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # the deflate stream broken in its middle
        content = bytes(data)
    archive.write_bytes(content)
    shutil.rmtree(mini / cifar_files.PY_FOLDER)
    shutil.rmtree(mini / cifar_files.BIN_FOLDER)
    proc = run_bench("run", *TINY[2:], "--dataset", "cifar10", "--data-dir", str(mini), "--no-verify",
                     "--out", str(tmp_path / "run"))
    _one_line(proc, cifar_files.ARCHIVE)


def test_a_report_of_two_runs_of_one_machine_tells_them_apart_and_one_run_twice_is_one(good_run, tmp_path, capsys):
    a, b = _copy(good_run, tmp_path, "a"), _copy(good_run, tmp_path, "b")
    _environment(b, run_id="after")
    status, _, err = _cli(capsys, "report", str(a), str(b), "--out", str(tmp_path / "both"))
    assert status == 0, err
    report = (tmp_path / "both" / "report.md").read_text()
    assert "· after" in report and "· " + json.loads((a / "environment.json").read_text())["run_id"] in report
    cases = len(RunFolder(a).results())
    status, _, err = _cli(capsys, "report", str(a), str(a))
    assert status == 0, err
    assert len((a / "results.csv").read_text().splitlines()) == cases + 1  # header and each Case once


@pytest.mark.parametrize("argv", [["plan", "--dataset", "synthetic", "--devices", "cpu"], ["compare", "A", "A"]])
@pytest.mark.parametrize("reader", ["head -1", "true"])  # true: gone before the first line (bench takes a second)
def test_a_reader_that_stops_early_ends_the_command_quietly(good_run, argv, reader):
    import subprocess
    import sys

    argv = [str(good_run) if a == "A" else a for a in argv]
    proc = subprocess.run(f"set -o pipefail; {sys.executable} -m bench {' '.join(argv)} | {reader}", shell=True, capture_output=True,
                          text=True, timeout=240, cwd=Path(__file__).parent.parent,
                          executable="/bin/bash", env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0 and proc.stdout.count("\n") == (reader != "true"), proc.stderr
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr
